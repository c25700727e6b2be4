"""Model families behind one interface, and :func:`make_model` to build any of them.

Families: ``formula`` (average occasion value x purchase rate x horizon), ``btyd``
(BG/NBD + Gamma-Gamma), ``sklearn`` (HistGradientBoostingRegressor) and ``catboost``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from clv_training.models.base import CLVModel, ModelFitError, feature_matrix

if TYPE_CHECKING:
    from clv_training.models.btyd import BTYDModel
    from clv_training.models.catboost_model import CatBoostModel
    from clv_training.models.churn import ChurnModel, churn_label
    from clv_training.models.formula import FormulaModel
    from clv_training.models.hgb import HGBModel

#: Family name -> "module:class", in the order the job trains them. Modules are imported
#: on first use, so unpickling a formula or BTYD model does not import CatBoost.
FAMILIES: dict[str, str] = {
    "formula": "clv_training.models.formula:FormulaModel",
    "btyd": "clv_training.models.btyd:BTYDModel",
    "sklearn": "clv_training.models.hgb:HGBModel",
    "catboost": "clv_training.models.catboost_model:CatBoostModel",
}
_LAZY = {
    "FormulaModel": "clv_training.models.formula",
    "BTYDModel": "clv_training.models.btyd",
    "HGBModel": "clv_training.models.hgb",
    "CatBoostModel": "clv_training.models.catboost_model",
    "ChurnModel": "clv_training.models.churn",
    "churn_label": "clv_training.models.churn",
}

__all__ = [
    "FAMILIES",
    "BTYDModel",
    "CLVModel",
    "CatBoostModel",
    "ChurnModel",
    "FormulaModel",
    "HGBModel",
    "ModelFitError",
    "churn_label",
    "family_class",
    "feature_matrix",
    "make_model",
]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def family_class(name: str) -> type[CLVModel]:
    """The model class of family ``name`` (imports its module)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; choose one of {sorted(FAMILIES)}")
    module, cls = FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_model(
    name: str, params: dict[str, Any] | None, horizon_days: int, seed: int
) -> CLVModel:
    """Build an unfitted model of family ``name``.

    Parameters
    ----------
    name : str
        ``formula``, ``btyd``, ``sklearn`` or ``catboost``.
    params : dict
        The family's parameters (``conf/model/<name>.yaml`` params plus tuned values).
    horizon_days : int
        Prediction window in days.
    seed : int
        Seed for everything stochastic in the fit.

    Returns
    -------
    CLVModel
        The unfitted model.
    """
    params = dict(params or {})
    cls = family_class(name)
    if name == "formula":
        if params:
            raise ValueError(f"formula takes no parameters, got {sorted(params)}")
        return cls(horizon_days, seed)
    if name == "btyd":
        unknown = sorted(set(params) - {"max_fit_customers"})
        if unknown:
            raise ValueError(f"btyd: unknown parameters {unknown}; allowed: ['max_fit_customers']")
        return cls(horizon_days, seed, max_fit_customers=params.get("max_fit_customers"))
    return cls(horizon_days, seed, params=params)
