"""Trend labels, value segments and the at-risk flag.

Trend labels come from the ``spend_trend`` feature (recent against earlier spend rate, in
[-1, 1]). Value segments cut predicted CLV at quantiles learned on the training window,
so the thresholds stay fixed when the rule is applied to later customers; a high-value
customer whose churn probability reaches the threshold is flagged at risk.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

TREND_LABELS = ("growing", "stable", "declining")
SEGMENT_LABELS = ("high", "medium", "low")


def trend_labels(
    spend_trend: Any,
    T: Any,
    trend_window_days: float,
    growing_above: float,
    declining_below: float,
) -> np.ndarray:
    """Label each customer's spend trend.

    Parameters
    ----------
    spend_trend : array-like of shape (n,)
        ``(recent - earlier) / (recent + earlier)`` spend rate, in [-1, 1].
    T : array-like of shape (n,)
        Customer age at the cutoff, in days (cutoff - first occasion day).
    trend_window_days : float
        Length of the recent window the trend compares (``features.trend_window_days``).
    growing_above, declining_below : float
        ``spend_trend > growing_above`` is "growing", ``spend_trend < declining_below`` is
        "declining", anything between (bounds included) is "stable".

    Returns
    -------
    numpy.ndarray of str
        "growing", "stable" or "declining" per customer. Customers younger than the trend
        window (``T < trend_window_days``) have no earlier rate to compare with and are
        "stable"; so is a missing (NaN) trend.

    Raises
    ------
    ValueError
        If the inputs differ in length or ``declining_below > growing_above``.
    """
    trend = np.asarray(spend_trend, dtype=np.float64).reshape(-1)
    age = np.asarray(T, dtype=np.float64).reshape(-1)
    if trend.size != age.size:
        raise ValueError(f"spend_trend has {trend.size} values but T has {age.size}.")
    if declining_below > growing_above:
        raise ValueError(
            f"segments.declining_below ({declining_below}) must not exceed "
            f"segments.growing_above ({growing_above})."
        )

    labels = np.full(trend.size, "stable", dtype=object)
    old_enough = age >= trend_window_days
    labels[old_enough & (trend > growing_above)] = "growing"
    labels[old_enough & (trend < declining_below)] = "declining"
    return labels.astype(str)


class SegmentRule:
    """High / medium / low value segments from predicted CLV, plus an at-risk flag.

    Parameters
    ----------
    high_quantile : float
        Customers at or above this quantile of training-window CLV are "high".
    medium_quantile : float
        Customers at or above this quantile (and below the high threshold) are "medium";
        the rest are "low".
    at_risk_churn_probability : float
        A "high" customer with churn probability at or above this is ``at_risk``.

    Notes
    -----
    When predictions are zero-heavy a quantile can fall on the smallest predicted value
    (e.g. the median is 0 when more than half the customers are predicted 0). Then ``>=``
    would put every customer in that segment; instead, a threshold equal to the training
    minimum is applied strictly (``clv > threshold``), so customers at the minimum stay
    "low". ``thresholds()`` reports which comparison is used.

    Examples
    --------
    >>> rule = SegmentRule(0.8, 0.5, 0.5).fit(np.arange(1.0, 11.0))
    >>> rule.assign([10.0, 6.0, 1.0], [0.7, 0.9, 0.9])["segment"].tolist()
    ['high', 'medium', 'low']
    """

    def __init__(
        self,
        high_quantile: float = 0.8,
        medium_quantile: float = 0.5,
        at_risk_churn_probability: float = 0.5,
    ) -> None:
        self.high_quantile = high_quantile
        self.medium_quantile = medium_quantile
        self.at_risk_churn_probability = at_risk_churn_probability

    def fit(self, clv_train: Any) -> SegmentRule:
        """Learn the CLV thresholds as quantiles of training-window predictions.

        Parameters
        ----------
        clv_train : array-like of shape (n,)
            Predicted CLV of the training window's customers.

        Returns
        -------
        SegmentRule
            ``self``, fitted.

        Raises
        ------
        ValueError
            On empty or non-finite input, or quantiles outside ``0 <= medium <= high <= 1``.
        """
        if not 0.0 <= self.medium_quantile <= self.high_quantile <= 1.0:
            raise ValueError(
                "Need 0 <= segments.medium_quantile <= segments.high_quantile <= 1, got "
                f"{self.medium_quantile} and {self.high_quantile}."
            )
        if not 0.0 <= self.at_risk_churn_probability <= 1.0:
            raise ValueError(
                "segments.at_risk_churn_probability must be in [0, 1], got "
                f"{self.at_risk_churn_probability}."
            )
        clv = np.asarray(clv_train, dtype=np.float64).reshape(-1)
        if clv.size == 0:
            raise ValueError("clv_train is empty; segment thresholds need predictions.")
        if not np.all(np.isfinite(clv)):
            raise ValueError(f"clv_train has {int(np.sum(~np.isfinite(clv)))} non-finite values.")

        minimum = float(clv.min())
        self.high_threshold_ = float(np.quantile(clv, self.high_quantile))
        self.medium_threshold_ = float(np.quantile(clv, self.medium_quantile))
        self.high_strict_ = self.high_threshold_ <= minimum
        self.medium_strict_ = self.medium_threshold_ <= minimum
        self.n_train_ = int(clv.size)
        logger.info(
            "Segment thresholds from %d training customers: high %s %.4g, medium %s %.4g.",
            clv.size,
            ">" if self.high_strict_ else ">=",
            self.high_threshold_,
            ">" if self.medium_strict_ else ">=",
            self.medium_threshold_,
        )
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "high_threshold_"):
            raise RuntimeError("SegmentRule is not fitted; call fit(clv_train) first.")

    def assign(self, clv: Any, churn_probability: Any) -> pd.DataFrame:
        """Segment customers and flag high-value customers likely to churn.

        Parameters
        ----------
        clv : array-like or pandas.Series of shape (n,)
            Predicted CLV; a Series' index is kept.
        churn_probability : array-like of shape (n,)
            Probability of no purchase in the horizon, in [0, 1]. NaN means unknown and is
            never at risk.

        Returns
        -------
        pandas.DataFrame
            ``segment`` ("high" | "medium" | "low") and ``at_risk`` (bool).
        """
        self._check_fitted()
        values = np.asarray(clv, dtype=np.float64).reshape(-1)
        churn = np.asarray(churn_probability, dtype=np.float64).reshape(-1)
        if values.size != churn.size:
            raise ValueError(
                f"clv has {values.size} values but churn_probability has {churn.size}."
            )
        if np.any(np.isnan(values)):
            raise ValueError(f"clv has {int(np.sum(np.isnan(values)))} NaN values.")
        known = ~np.isnan(churn)
        if np.any((churn[known] < 0) | (churn[known] > 1)):
            raise ValueError("churn_probability must lie in [0, 1].")
        if not np.all(known):
            logger.warning(
                "%d customers have no churn probability; none is at risk.", int(np.sum(~known))
            )

        high = (
            values > self.high_threshold_ if self.high_strict_
            else values >= self.high_threshold_
        )
        medium = (
            values > self.medium_threshold_ if self.medium_strict_
            else values >= self.medium_threshold_
        )
        segment = np.where(high, "high", np.where(medium, "medium", "low"))
        at_risk = high & known & (np.nan_to_num(churn) >= self.at_risk_churn_probability)
        index = clv.index if isinstance(clv, pd.Series) else None
        return pd.DataFrame({"segment": segment.astype(str), "at_risk": at_risk}, index=index)

    def thresholds(self) -> dict[str, Any]:
        """Fitted thresholds for logging.

        Returns
        -------
        dict
            Quantiles, CLV thresholds, whether each comparison is strict, the churn
            threshold and the number of training customers.
        """
        self._check_fitted()
        return {
            "high_quantile": float(self.high_quantile),
            "medium_quantile": float(self.medium_quantile),
            "high_threshold": self.high_threshold_,
            "medium_threshold": self.medium_threshold_,
            "high_strict": bool(self.high_strict_),
            "medium_strict": bool(self.medium_strict_),
            "at_risk_churn_probability": float(self.at_risk_churn_probability),
            "n_train": self.n_train_,
        }
