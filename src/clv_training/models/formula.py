"""The traditional CLV formula: average occasion value x purchase rate x horizon."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from clv_training.models.base import CLVModel, finalize_prediction

logger = logging.getLogger(__name__)

_REQUIRED = ("avg_occasion_value", "frequency", "T")


class FormulaModel(CLVModel):
    """Expected spend = ``avg_occasion_value * frequency / T * horizon_days``.

    The purchase rate is repeat occasions per day since the first purchase (0 when
    ``T == 0``, a customer first seen on the cutoff day). The model has no parameters, so
    :meth:`fit` only checks its input.

    Parameters
    ----------
    horizon_days : int
        Length of the prediction window in days.
    seed : int
        Unused; kept for the common interface.
    """

    name = "formula"

    def fit(self, X: pd.DataFrame, y: np.ndarray | None = None) -> FormulaModel:
        """Check that ``X`` has the columns the formula needs; nothing is learnt."""
        _check_columns(X)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Expected spend over ``horizon_days`` for each row of ``X`` (>= 0)."""
        _check_columns(X)
        value = X["avg_occasion_value"].to_numpy(dtype="float64")
        frequency = X["frequency"].to_numpy(dtype="float64")
        age = X["T"].to_numpy(dtype="float64")
        rate = np.divide(frequency, age, out=np.zeros_like(frequency), where=age > 0)
        # A negative average (net refunds under occasion_policy=any) predicts no spend.
        spend = np.clip(value, 0.0, None) * rate * self.horizon_days
        return finalize_prediction(spend, len(X), self.name)


def _check_columns(X: pd.DataFrame) -> None:
    missing = [c for c in _REQUIRED if c not in X.columns]
    if missing:
        raise ValueError(f"formula: X lacks columns {missing}")
