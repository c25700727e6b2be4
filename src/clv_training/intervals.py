"""Conformal prediction intervals for CLV, fitted on held-out calibration customers.

The method is Mondrian (group-conditional) split conformal prediction. Calibration customers
are put into bins of predicted value; within each bin the empirical quantiles of a
conformity score give the interval offsets, with the finite-sample correction of split
conformal prediction so that coverage holds for a fresh customer from the same
distribution.

Two scores are available:

``"scaled"`` (default)
    ``(y - yhat) / (yhat + c)``, the residual relative to the prediction, with ``c`` a
    positive offset (the median calibration prediction) that keeps customers predicted at
    or near zero from getting a zero-width interval. Spend is zero-inflated and roughly
    proportional in spread to its mean, so inside a bin the width grows with the customer's
    prediction instead of being one width for the whole bin.
``"residual"``
    the plain signed residual ``y - yhat``: one width per bin.

For each level ``1 - alpha`` the interval is ``[yhat + q_lo * s, yhat + q_hi * s]`` where
``q_lo`` and ``q_hi`` are the bin's score quantiles at ``alpha / 2`` and ``1 - alpha / 2``
and ``s`` is the scale (1 for the residual score). Bounds are then clipped so that
``0 <= lower <= yhat <= upper``, and nested across levels explicitly: a higher level's
interval always contains a lower level's.

Clipping does not lose coverage: spend is never negative, so raising a negative lower bound
to zero excludes nobody, and widening an interval towards ``yhat`` only adds coverage.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: Fewest calibration customers accepted at all.
MIN_CALIBRATION_SIZE = 50
#: Bins with fewer calibration customers than this are merged into a neighbour.
MIN_BIN_SIZE = 30
SCORES = ("scaled", "residual")


def _as_1d_float(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        n_bad = int(np.sum(~np.isfinite(array)))
        raise ValueError(f"{name} has {n_bad} non-finite values (NaN or inf); expected numbers.")
    return array


def _level_suffix(level: float) -> int:
    return int(round(level * 100))


def _lower_rank(n: int, tail: float) -> int:
    """1-based rank of the order statistic used as the lower offset (0: unbounded below)."""
    return int(math.floor((n + 1) * tail + 1e-9))


def _upper_rank(n: int, tail: float) -> int:
    """1-based rank of the order statistic used as the upper offset, ceil((n+1)(1-tail))."""
    return int(math.ceil((n + 1) * (1.0 - tail) - 1e-9))


def _merge_small_bins(pred: np.ndarray, inner_edges: np.ndarray, min_size: int) -> np.ndarray:
    """Drop inner edges until every bin of ``pred`` holds at least ``min_size`` points.

    Bins are ``(-inf, e_1], (e_1, e_2], ..., (e_k, inf)``, so tied predictions always share
    a bin. The smallest bin is merged with its smaller neighbour, one merge at a time.
    """
    edges = np.asarray(inner_edges, dtype=np.float64)
    while edges.size > 0:
        counts = np.bincount(np.searchsorted(edges, pred, side="left"), minlength=edges.size + 1)
        smallest = int(np.argmin(counts))
        if counts[smallest] >= min_size:
            break
        if smallest == 0:
            drop = 0
        elif smallest == counts.size - 1:
            drop = smallest - 1
        else:
            # Merge with the smaller neighbour: drop the edge shared with it.
            drop = smallest - 1 if counts[smallest - 1] <= counts[smallest + 1] else smallest
        edges = np.delete(edges, drop)
    return edges


class ConformalIntervals:
    """Mondrian split-conformal intervals for predicted spend.

    Parameters
    ----------
    levels : sequence of float
        Nominal coverage levels, each in (0, 1), e.g. ``(0.8, 0.9)``.
    n_bins : int
        Target number of bins of predicted value (quantiles of the calibration
        predictions). Tied quantiles collapse and bins with fewer than ``min_bin_size``
        customers are merged, so fewer bins may be used.
    score : {"scaled", "residual"}
        Conformity score; see the module docstring.
    min_bin_size : int
        Fewest calibration customers per bin. Raised if needed so that the finite-sample
        upper quantile of every level is a finite order statistic.

    Notes
    -----
    With exchangeable calibration and test customers, each bin's interval covers at least
    the nominal share of that bin's future customers (Vovk's Mondrian conformal
    predictors); with continuous scores it over-covers by at most ``1 / (n_bin + 1)``.

    Coverage is guaranteed per bin of *predicted* value, not per kind of *actual*
    outcome: customers who end up buying nothing are covered more often than nominal
    (zero sits inside most intervals) and buyers less often. ``coverage_table`` in
    :mod:`clv_training.evaluation.metrics` reports both groups.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> yhat = rng.gamma(2.0, 50.0, size=2000)
    >>> y = rng.gamma(2.0, yhat / 2.0)
    >>> ci = ConformalIntervals(levels=(0.8, 0.9)).fit(yhat, y)
    >>> frame = ci.to_frame(yhat[:3])
    >>> list(frame.columns)
    ['clv_lower_80', 'clv_upper_80', 'clv_lower_90', 'clv_upper_90']
    """

    def __init__(
        self,
        levels: Sequence[float] = (0.8, 0.9),
        n_bins: int = 10,
        score: str = "scaled",
        min_bin_size: int = MIN_BIN_SIZE,
    ) -> None:
        # Stored as plain floats so a pickled model does not carry OmegaConf containers.
        self.levels = tuple(float(level) for level in levels)
        self.n_bins = n_bins
        self.score = score
        self.min_bin_size = min_bin_size

    # ------------------------------------------------------------------ validation
    def _checked_levels(self) -> list[float]:
        levels = sorted(float(level) for level in self.levels)
        if not levels:
            raise ValueError("levels is empty; give at least one coverage level in (0, 1).")
        if any(not 0.0 < level < 1.0 for level in levels):
            raise ValueError(f"levels must lie strictly between 0 and 1, got {levels}.")
        suffixes = [_level_suffix(level) for level in levels]
        if len(set(suffixes)) != len(suffixes):
            raise ValueError(f"levels {levels} round to the same percentage column names.")
        return levels

    def _check_params(self) -> list[float]:
        levels = self._checked_levels()
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}.")
        if int(self.n_bins) < 1:
            raise ValueError(f"n_bins must be >= 1, got {self.n_bins}.")
        if int(self.min_bin_size) < 1:
            raise ValueError(f"min_bin_size must be >= 1, got {self.min_bin_size}.")
        return levels

    def _check_fitted(self) -> None:
        if not hasattr(self, "edges_"):
            raise RuntimeError("ConformalIntervals is not fitted; call fit(y_pred_cal, y_cal).")

    # ------------------------------------------------------------------ helpers
    def _scale(self, pred: np.ndarray) -> np.ndarray:
        if self.score == "residual":
            return np.ones_like(pred)
        return pred + self.scale_offset_

    def _bin_of(self, pred: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.edges_, pred, side="left")

    # ------------------------------------------------------------------ API
    def fit(self, y_pred_cal: Any, y_cal: Any) -> ConformalIntervals:
        """Learn per-bin score quantiles from calibration customers.

        Parameters
        ----------
        y_pred_cal : array-like of shape (n,)
            Model predictions for held-out calibration customers (not used in training).
        y_cal : array-like of shape (n,)
            Their actual spend over the horizon.

        Returns
        -------
        ConformalIntervals
            ``self``, fitted.

        Raises
        ------
        ValueError
            If the inputs differ in length, hold non-finite values, or there are fewer than
            50 calibration customers (or too few for the highest level to be finite).
        """
        levels = self._check_params()
        pred = np.clip(_as_1d_float(y_pred_cal, "y_pred_cal"), 0.0, None)
        actual = _as_1d_float(y_cal, "y_cal")
        if pred.size != actual.size:
            raise ValueError(
                f"y_pred_cal has {pred.size} values but y_cal has {actual.size}; "
                "they must describe the same calibration customers."
            )

        smallest_alpha = 1.0 - max(levels)
        # Smallest n for which ceil((n + 1)(1 - alpha / 2)) <= n, i.e. a finite upper bound.
        needed = math.ceil(2.0 / smallest_alpha - 1.0 - 1e-9)
        min_size = max(int(self.min_bin_size), needed)
        if pred.size < max(MIN_CALIBRATION_SIZE, needed):
            raise ValueError(
                f"Calibration set too small for conformal intervals: {pred.size} customers, "
                f"need at least {max(MIN_CALIBRATION_SIZE, needed)} for levels {levels}. "
                "Raise split.calibration_fraction or use more data."
            )

        if self.score == "scaled":
            # Limitation: the offset is taken from the same calibration customers whose
            # scores are ranked, which breaks exact exchangeability with a new customer. It
            # is one scalar (a median), so the effect is negligible at the calibration
            # sizes we accept; a separate split would cost calibration customers.
            median_pred = float(np.median(pred))
            fallback = float(np.mean(np.abs(actual - pred)))
            self.scale_offset_ = median_pred if median_pred > 0 else (fallback or 1.0)
        else:
            self.scale_offset_ = 0.0

        quantile_points = np.linspace(0.0, 1.0, int(self.n_bins) + 1)[1:-1]
        raw_edges = np.unique(np.quantile(pred, quantile_points)) if quantile_points.size else []
        self.edges_ = _merge_small_bins(pred, np.asarray(raw_edges), min_size)

        # Limitation: tied scores (many customers with identical spend, e.g. repeated
        # zero-spend customers with identical predictions) make the order statistic sit
        # on a tie, which can only add coverage, never lose it.
        scores = (actual - pred) / self._scale(pred)
        bins = self._bin_of(pred)
        n_used = self.edges_.size + 1
        self.offsets_: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        self.bin_counts_ = np.bincount(bins, minlength=n_used)
        lows = {level: np.empty(n_used) for level in levels}
        highs = {level: np.empty(n_used) for level in levels}
        for b in range(n_used):
            ordered = np.sort(scores[bins == b])
            n = ordered.size
            for level in levels:
                tail = (1.0 - level) / 2.0
                k_lo, k_hi = _lower_rank(n, tail), _upper_rank(n, tail)
                # k_lo == 0: the bound is unbounded below, i.e. clipped at zero spend.
                lows[level][b] = ordered[k_lo - 1] if k_lo >= 1 else -np.inf
                highs[level][b] = ordered[min(k_hi, n) - 1]
        self.offsets_ = {level: (lows[level], highs[level]) for level in levels}
        self.levels_ = levels
        self.n_calibration_ = int(pred.size)
        logger.info(
            "Conformal intervals (%s score) fitted on %d calibration customers in %d bins "
            "(asked for %d; bins below %d customers merged).",
            self.score,
            pred.size,
            n_used,
            self.n_bins,
            min_size,
        )
        return self

    def predict(self, y_pred: Any) -> dict[float, tuple[np.ndarray, np.ndarray]]:
        """Interval bounds for new predictions.

        Parameters
        ----------
        y_pred : array-like of shape (m,)
            Model predictions (negative values are treated as 0).

        Returns
        -------
        dict
            ``{level: (lower, upper)}`` with ``0 <= lower <= yhat <= upper`` and, for
            levels ``a < b``, ``lower_b <= lower_a`` and ``upper_a <= upper_b``.
        """
        self._check_fitted()
        pred = _as_1d_float(y_pred, "y_pred")
        if np.any(pred < 0):
            logger.warning(
                "%d predictions are negative; intervals treat them as 0.", int(np.sum(pred < 0))
            )
            pred = np.clip(pred, 0.0, None)
        bins = self._bin_of(pred)
        scale = self._scale(pred)

        result: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        inner_lower, inner_upper = pred, pred
        for level in self.levels_:  # ascending, so each level nests the previous one
            q_lo, q_hi = self.offsets_[level]
            # q_lo may be -inf (unbounded below); the scale is > 0, so this clips to 0.
            lower = np.clip(pred + q_lo[bins] * scale, 0.0, pred)
            upper = np.maximum(pred + q_hi[bins] * scale, pred)
            lower = np.minimum(lower, inner_lower)
            upper = np.maximum(upper, inner_upper)
            result[level] = (lower, upper)
            inner_lower, inner_upper = lower, upper
        return result

    def to_frame(self, y_pred: Any) -> pd.DataFrame:
        """Interval bounds as columns ``clv_lower_<pct>`` and ``clv_upper_<pct>``.

        Parameters
        ----------
        y_pred : array-like or pandas.Series of shape (m,)
            Model predictions; a Series' index is kept.

        Returns
        -------
        pandas.DataFrame
            One row per prediction, lower and upper columns for each level in ascending
            level order, e.g. ``clv_lower_80, clv_upper_80, clv_lower_90, clv_upper_90``.
        """
        bounds = self.predict(y_pred)
        index = y_pred.index if isinstance(y_pred, pd.Series) else None
        columns: dict[str, np.ndarray] = {}
        for level, (lower, upper) in bounds.items():
            suffix = _level_suffix(level)
            columns[f"clv_lower_{suffix}"] = lower
            columns[f"clv_upper_{suffix}"] = upper
        return pd.DataFrame(columns, index=index)

    def describe(self) -> dict[str, Any]:
        """Fitted bins and offsets, JSON-friendly, for logging.

        Returns
        -------
        dict
            ``score``, ``scale_offset``, ``n_calibration``, ``levels`` and ``bins``: one
            entry per bin with its prediction range (``None`` = unbounded), calibration
            count and, per level, the lower and upper score offsets (``None`` for an
            unbounded lower offset, i.e. a lower bound of zero).
        """
        self._check_fitted()
        lows = [None, *self.edges_.tolist()]
        highs = [*self.edges_.tolist(), None]
        bins = []
        for b in range(self.edges_.size + 1):
            entry: dict[str, Any] = {
                "pred_above": lows[b],
                "pred_at_most": highs[b],
                "n": int(self.bin_counts_[b]),
            }
            for level in self.levels_:
                q_lo, q_hi = self.offsets_[level]
                suffix = _level_suffix(level)
                entry[f"offset_lower_{suffix}"] = (
                    float(q_lo[b]) if np.isfinite(q_lo[b]) else None
                )
                entry[f"offset_upper_{suffix}"] = float(q_hi[b])
            bins.append(entry)
        return {
            "score": self.score,
            "scale_offset": float(self.scale_offset_),
            "n_calibration": self.n_calibration_,
            "levels": list(self.levels_),
            "bins": bins,
        }
