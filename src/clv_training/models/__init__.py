"""Model families behind one interface, and :func:`make_model` to build any of them.

Families: ``formula`` (average occasion value x purchase rate x horizon), ``btyd``
(BG/NBD + Gamma-Gamma), ``sklearn`` (HistGradientBoostingRegressor) and ``catboost``.
"""

from __future__ import annotations

from typing import Any

from clv_training.models.base import CLVModel, ModelFitError, feature_matrix
from clv_training.models.btyd import BTYDModel
from clv_training.models.catboost_model import CatBoostModel
from clv_training.models.churn import ChurnModel, churn_label
from clv_training.models.formula import FormulaModel
from clv_training.models.hgb import HGBModel

#: Family name -> class, in the order the job trains them.
FAMILIES: dict[str, type[CLVModel]] = {
    "formula": FormulaModel,
    "btyd": BTYDModel,
    "sklearn": HGBModel,
    "catboost": CatBoostModel,
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
    "feature_matrix",
    "make_model",
]


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
    if name == "formula":
        if params:
            raise ValueError(f"formula takes no parameters, got {sorted(params)}")
        return FormulaModel(horizon_days, seed)
    if name == "btyd":
        unknown = sorted(set(params) - {"max_fit_customers"})
        if unknown:
            raise ValueError(f"btyd: unknown parameters {unknown}; allowed: ['max_fit_customers']")
        return BTYDModel(horizon_days, seed, max_fit_customers=params.get("max_fit_customers"))
    if name == "sklearn":
        return HGBModel(horizon_days, seed, params)
    if name == "catboost":
        return CatBoostModel(horizon_days, seed, params)
    raise ValueError(f"unknown model family {name!r}; choose one of {sorted(FAMILIES)}")
