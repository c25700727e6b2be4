"""The interface every model family implements, and the feature matrix they all read.

A model takes ``X`` (customer features at one or more cutoffs, all times in days, plus a
``cutoff`` column and possibly ``customer_id``) and ``y`` (spend over the next
``horizon_days``), and predicts that spend for new rows of ``X``.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from clv_training.config import FeaturesConfig
from clv_training.features.build import feature_columns

logger = logging.getLogger(__name__)

#: Columns of ``X`` that are never model inputs.
NON_FEATURE_COLUMNS = ("cutoff", "customer_id")
#: Prefix of target columns (``target_spend``, ``target_occasions``) that may ride along.
TARGET_PREFIX = "target_"

#: The features built at a cutoff, in the order the models see them. Any further numeric
#: column (for example BG/NBD features) follows, sorted by name.
FEATURE_COLUMNS = tuple(feature_columns(FeaturesConfig()))


class ModelFitError(RuntimeError):
    """A model family could not be fitted (or its fit is not fit for use).

    Parameters
    ----------
    family : str
        The model family (``btyd``, ``catboost``, ...).
    diagnostic : str
        What went wrong, in words a user can act on, with the offending values.
    values : mapping of str to float, optional
        The numbers behind the diagnostic (fitted parameters, counts), for logging.
    """

    def __init__(
        self, family: str, diagnostic: str, values: Mapping[str, float] | None = None
    ) -> None:
        self.family = family
        self.diagnostic = diagnostic
        self.values = dict(values or {})
        super().__init__(f"{family}: {diagnostic}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the exception picklable (multiprocessing, MLflow) despite the custom init.
        return (type(self), (self.family, self.diagnostic, self.values))


def feature_matrix(X: pd.DataFrame) -> pd.DataFrame:
    """Return the numeric feature columns of ``X`` in a stable order, as float64.

    Drops ``cutoff``, ``customer_id`` and every ``target_*`` column, and any column that is
    not numeric. Known features come first in :data:`FEATURE_COLUMNS` order, then any other
    numeric columns sorted by name, so the same columns always give the same matrix
    whatever their order in ``X``.

    Parameters
    ----------
    X : pandas.DataFrame
        Customer features (and possibly ``cutoff``, ``customer_id``, targets).

    Returns
    -------
    pandas.DataFrame
        Same index as ``X``; float64 columns only.
    """
    candidates = [
        c
        for c in X.columns
        if c not in NON_FEATURE_COLUMNS and not str(c).startswith(TARGET_PREFIX)
    ]
    numeric = [
        c
        for c in candidates
        if pd.api.types.is_numeric_dtype(X[c]) and not pd.api.types.is_bool_dtype(X[c])
    ]
    known = [c for c in FEATURE_COLUMNS if c in numeric]
    extra = sorted((c for c in numeric if c not in FEATURE_COLUMNS), key=str)
    return X[known + extra].astype("float64")


def select_features(X: pd.DataFrame, columns: list[str], family: str) -> pd.DataFrame:
    """Take the fitted feature ``columns`` from ``X``, failing with the missing names.

    Parameters
    ----------
    X : pandas.DataFrame
        Rows to score.
    columns : list of str
        Feature names recorded at fit time.
    family : str
        Model family, for the error message.

    Returns
    -------
    pandas.DataFrame
        ``X[columns]`` as float64.
    """
    missing = [c for c in columns if c not in X.columns]
    if missing:
        raise ValueError(f"{family}: X lacks feature columns seen at fit time: {missing}")
    return X[columns].astype("float64")


def check_xy(X: pd.DataFrame, y: np.ndarray | pd.Series, family: str) -> np.ndarray:
    """Check that ``y`` matches ``X`` and is finite; return it as a float64 array.

    Parameters
    ----------
    X : pandas.DataFrame
        Training rows.
    y : array-like
        Target per row.
    family : str
        Model family, for the error message.

    Returns
    -------
    numpy.ndarray
        ``y`` as a 1-D float64 array.
    """
    y_arr = np.asarray(y, dtype="float64").reshape(-1)
    if len(y_arr) != len(X):
        raise ValueError(f"{family}: X has {len(X)} rows but y has {len(y_arr)}")
    if len(y_arr) == 0:
        raise ModelFitError(family, "no training rows")
    if not np.all(np.isfinite(y_arr)):
        raise ValueError(f"{family}: y has {int(np.sum(~np.isfinite(y_arr)))} non-finite values")
    return y_arr


class CLVModel(abc.ABC):
    """A model of spend over the next ``horizon_days`` from customer features at a cutoff.

    Subclasses must stay picklable with the standard library ``pickle`` (they travel
    inside an MLflow pyfunc bundle) and must not need PyMC at predict time.

    Parameters
    ----------
    horizon_days : int
        Length of the prediction window in days.
    seed : int
        Random seed for everything stochastic in the fit.
    """

    #: Family name, as in ``conf/model/<name>.yaml``.
    name: str = "base"

    def __init__(self, horizon_days: int, seed: int = 0) -> None:
        if horizon_days <= 0:
            raise ValueError(f"horizon_days must be positive, got {horizon_days}")
        self.horizon_days = int(horizon_days)
        self.seed = int(seed)

    @abc.abstractmethod
    def fit(self, X: pd.DataFrame, y: np.ndarray) -> CLVModel:
        """Fit on features ``X`` and spend ``y`` over the horizon; return ``self``."""

    @abc.abstractmethod
    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Expected spend over ``horizon_days``: shape ``(len(X),)``, finite, >= 0."""

    def feature_importance(self) -> pd.Series | None:
        """Importance per feature (sorted, descending), or None if the family has none."""
        return None

    def fit_diagnostics(self) -> dict[str, float]:
        """Numbers worth logging about the fit (fitted parameters, row counts, seconds)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(horizon_days={self.horizon_days}, seed={self.seed})"


def finalize_prediction(values: np.ndarray, n_rows: int, family: str) -> np.ndarray:
    """Clip a raw prediction at 0 and check that it is finite with one value per row.

    Parameters
    ----------
    values : numpy.ndarray
        Raw predictions.
    n_rows : int
        Expected length.
    family : str
        Model family, for the error message.

    Returns
    -------
    numpy.ndarray
        Float64 array of shape ``(n_rows,)``, all finite and >= 0.
    """
    out = np.asarray(values, dtype="float64").reshape(-1)
    if out.shape != (n_rows,):
        raise RuntimeError(f"{family}: predicted {out.shape} values for {n_rows} rows")
    bad = ~np.isfinite(out)
    if bad.any():
        raise RuntimeError(f"{family}: {int(bad.sum())} non-finite predictions")
    return np.clip(out, 0.0, None)


def catboost_importance(estimator: Any, names: list[str]) -> pd.Series | None:
    """A fitted CatBoost model's importance per feature, descending (None if unfitted)."""
    if estimator is None:
        return None
    values = estimator.get_feature_importance()
    return pd.Series(values, index=names, name="importance").sort_values(ascending=False)
