"""Evaluation metrics with the same names for every model family.

Every metric function takes plain arrays and returns ``{f"{prefix}_{name}": float}`` so the
training job can log validation and test scores of any family side by side.

Conventions shared by the ranking metrics (Gini, decile tables, top-decile capture, gains):

* Customers are ranked by prediction. Customers with **tied predictions** are
  indistinguishable to the model, so within a tie group each customer is credited with the
  group's mean actual spend. This is the expected value under a random order of the tied
  customers: a model cannot look better than it is by happening to list its tied
  customers best-first, and a constant prediction has a Gini of exactly 0.
* Deciles are 10 equal-count groups (sizes differ by at most one) of customers sorted by
  prediction, ties in input order; decile 10 holds the highest predictions. With fewer
  than 10 customers some deciles are empty and are skipped.
* A metric that is undefined on the data (no actual spend, a single class) is NaN, except
  Spearman and Gini, which are 0.0 when either input is constant: no ranking signal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import brier_score_loss, roc_auc_score

logger = logging.getLogger(__name__)

N_DECILES = 10


# --------------------------------------------------------------------------- helpers
def _vector(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name} is empty.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has {int(np.sum(~np.isfinite(array)))} non-finite values.")
    return array


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    actual, pred = _vector(y_true, "y_true"), _vector(y_pred, "y_pred")
    if actual.size != pred.size:
        raise ValueError(f"y_true has {actual.size} values but y_pred has {pred.size}.")
    return actual, pred


def _level_suffix(level: float) -> int:
    return int(round(float(level) * 100))


def tie_averaged(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Replace each actual value by the mean actual of its tied-prediction group.

    Parameters
    ----------
    y_true, y_pred : numpy.ndarray of shape (n,)
        Actual and predicted values.

    Returns
    -------
    numpy.ndarray of shape (n,)
        Actual values averaged within groups of equal prediction.
    """
    _, group = np.unique(y_pred, return_inverse=True)
    sums = np.bincount(group, weights=y_true)
    counts = np.bincount(group)
    return (sums / counts)[group]


def decile_index(y_pred: np.ndarray) -> np.ndarray:
    """Equal-count decile of each customer by prediction, 1 (lowest) to 10 (highest).

    Parameters
    ----------
    y_pred : numpy.ndarray of shape (n,)
        Predictions.

    Returns
    -------
    numpy.ndarray of int of shape (n,)
        Decile numbers; ties are split in input order (stable sort).
    """
    order = np.argsort(y_pred, kind="stable")
    decile = np.empty(y_pred.size, dtype=np.int64)
    for number, positions in enumerate(np.array_split(order, N_DECILES), start=1):
        decile[positions] = number
    return decile


def gains_curve(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative gains: share of actual spend captured by the top-ranked customers.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
        Actual and predicted spend.

    Returns
    -------
    share_customers, share_spend : numpy.ndarray of shape (n + 1,)
        Both start at 0 and end at 1 (``share_spend`` is NaN when total spend is 0).
        Tied predictions share their actual spend evenly (see the module notes).
    """
    actual, pred = _pair(y_true, y_pred)
    credited = tie_averaged(actual, pred)[np.argsort(-pred, kind="stable")]
    total = credited.sum()
    cumulative = np.r_[0.0, np.cumsum(credited)]
    share_spend = cumulative / total if total > 0 else np.full(cumulative.size, np.nan)
    return np.arange(actual.size + 1) / actual.size, share_spend


def _gini_of_order(values_in_order: np.ndarray) -> float:
    """Gini of a cumulative-gain curve: mean height above the random line."""
    n = values_in_order.size
    share = np.cumsum(values_in_order) / values_in_order.sum()
    return float(share.mean() - (n + 1) / (2.0 * n))


def normalized_gini(y_true: Any, y_pred: Any) -> float:
    """Normalized Gini: the model's cumulative-gain Gini over the perfect ranking's.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
        Actual and predicted spend.

    Returns
    -------
    float
        1 for a perfect ranking, about 0 for a random one, negative when reversed. 0.0 when
        total actual spend is not positive or all actual values are equal (no ranking to
        recover). Tied predictions are credited their group's mean actual.

    Notes
    -----
    The normalized Gini used in insurance and CLV scoring, e.g. Wang, Liu and Miao (2019),
    "Deep probabilistic model for customer lifetime value prediction".
    """
    actual, pred = _pair(y_true, y_pred)
    if actual.sum() <= 0 or np.all(actual == actual[0]):
        return 0.0
    model = _gini_of_order(tie_averaged(actual, pred)[np.argsort(-pred, kind="stable")])
    perfect = _gini_of_order(np.sort(actual)[::-1])
    return model / perfect if perfect > 0 else 0.0


def _decile_sums(actual: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
    decile = decile_index(pred)
    credited = tie_averaged(actual, pred)
    frame = pd.DataFrame({"decile": decile, "actual": credited, "predicted": pred})
    table = frame.groupby("decile").agg(
        n=("actual", "size"), actual_sum=("actual", "sum"), predicted_sum=("predicted", "sum")
    )
    return table


# --------------------------------------------------------------------------- metrics
def regression_metrics(y_true: Any, y_pred: Any, prefix: str) -> dict[str, float]:
    """Point-prediction metrics for predicted spend.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
        Actual and predicted spend over the horizon.
    prefix : str
        Key prefix, e.g. ``"val"`` or ``"test"``.

    Returns
    -------
    dict of str to float
        ``{prefix}_rmse``, ``_mae``; ``_spearman`` (0.0 if either input is constant);
        ``_gini`` (normalized, ties averaged); ``_decile_mape``: per predicted decile
        ``|sum actual - sum predicted| / sum actual``, averaged over the deciles whose
        actual sum is > 0 (NaN if none); ``_top_decile_capture``: share of actual spend
        in the top predicted decile; ``_total_error``: ``(sum pred - sum actual) / sum
        actual``. The last two are NaN when actual spend sums to 0.
    """
    actual, pred = _pair(y_true, y_pred)
    error = pred - actual
    total_actual = float(actual.sum())

    if np.all(actual == actual[0]) or np.all(pred == pred[0]):
        spearman = 0.0
    else:
        spearman = float(spearmanr(actual, pred).statistic)

    sums = _decile_sums(actual, pred)
    positive = sums[sums["actual_sum"] > 0]
    if positive.empty:
        decile_mape = float("nan")
    else:
        ape = (positive["actual_sum"] - positive["predicted_sum"]).abs() / positive["actual_sum"]
        decile_mape = float(ape.mean())

    if total_actual > 0:
        top_capture = float(sums["actual_sum"].iloc[-1] / total_actual)
        total_error = float((pred.sum() - total_actual) / total_actual)
    else:
        top_capture = total_error = float("nan")

    return {
        f"{prefix}_rmse": float(np.sqrt(np.mean(error**2))),
        f"{prefix}_mae": float(np.mean(np.abs(error))),
        f"{prefix}_spearman": spearman,
        f"{prefix}_gini": normalized_gini(actual, pred),
        f"{prefix}_decile_mape": decile_mape,
        f"{prefix}_top_decile_capture": top_capture,
        f"{prefix}_total_error": total_error,
    }


def _bounds(
    y_true: Any, lower: Mapping[float, Any], upper: Mapping[float, Any]
) -> tuple[np.ndarray, dict[float, tuple[np.ndarray, np.ndarray]]]:
    actual = _vector(y_true, "y_true")
    if set(lower) != set(upper):
        raise ValueError(f"lower has levels {sorted(lower)} but upper has {sorted(upper)}.")
    bounds = {}
    for level in sorted(lower):
        lo, hi = _vector(lower[level], "lower"), _vector(upper[level], "upper")
        if lo.size != actual.size or hi.size != actual.size:
            raise ValueError(f"Bounds for level {level} do not match y_true's length.")
        if np.any(lo > hi):
            raise ValueError(
                f"{int(np.sum(lo > hi))} intervals at level {level} have lower > upper."
            )
        bounds[float(level)] = (lo, hi)
    return actual, bounds


def interval_score(
    y_true: np.ndarray, lower: np.ndarray, upper: np.ndarray, alpha: float
) -> float:
    """Mean Winkler (interval) score at miscoverage ``alpha``; lower is better.

    ``width + 2 / alpha * (lower - y)`` if ``y < lower``, ``+ 2 / alpha * (y - upper)`` if
    ``y > upper`` (Gneiting and Raftery, 2007).
    """
    below = np.clip(lower - y_true, 0.0, None)
    above = np.clip(y_true - upper, 0.0, None)
    return float(np.mean(upper - lower + 2.0 / alpha * (below + above)))


def interval_metrics(
    y_true: Any,
    lower: Mapping[float, Any],
    upper: Mapping[float, Any],
    prefix: str,
) -> dict[str, float]:
    """Coverage, mean width and Winkler score of prediction intervals.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Actual spend.
    lower, upper : mapping of level to array-like of shape (n,)
        Interval bounds per nominal level, e.g. ``{0.8: ..., 0.9: ...}``.
    prefix : str
        Key prefix.

    Returns
    -------
    dict of str to float
        For each level with percentage ``p = int(round(level * 100))``:
        ``{prefix}_coverage_{p}`` (share with ``lower <= y <= upper``), ``_width_{p}``
        (mean width) and ``_winkler_{p}`` (interval score at ``alpha = 1 - level``).
    """
    actual, bounds = _bounds(y_true, lower, upper)
    out: dict[str, float] = {}
    for level, (lo, hi) in bounds.items():
        p = _level_suffix(level)
        out[f"{prefix}_coverage_{p}"] = float(np.mean((actual >= lo) & (actual <= hi)))
        out[f"{prefix}_width_{p}"] = float(np.mean(hi - lo))
        out[f"{prefix}_winkler_{p}"] = interval_score(actual, lo, hi, 1.0 - level)
    return out


def _binary(churned: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = _vector(churned, "churned"), _vector(prob, "prob")
    if labels.size != probs.size:
        raise ValueError(f"churned has {labels.size} values but prob has {probs.size}.")
    if not np.all(np.isin(labels, (0.0, 1.0))):
        raise ValueError("churned must hold 0/1 or booleans.")
    if np.any((probs < 0) | (probs > 1)):
        raise ValueError("prob must lie in [0, 1].")
    return labels.astype(int), probs


def churn_metrics(churned: Any, prob: Any, prefix: str) -> dict[str, float]:
    """Discrimination and calibration of churn probabilities.

    Parameters
    ----------
    churned : array-like of bool or 0/1, shape (n,)
        1 when the customer made no purchase in the horizon.
    prob : array-like of shape (n,)
        Predicted churn probability.
    prefix : str
        Key prefix.

    Returns
    -------
    dict of str to float
        ``{prefix}_churn_auc`` (ROC AUC; NaN when only one class is present) and
        ``{prefix}_churn_brier`` (mean squared error of the probability).
    """
    labels, probs = _binary(churned, prob)
    if np.unique(labels).size < 2:
        logger.warning("Only one churn class in %s; AUC is undefined (NaN).", prefix)
        auc = float("nan")
    else:
        auc = float(roc_auc_score(labels, probs))
    return {
        f"{prefix}_churn_auc": auc,
        f"{prefix}_churn_brier": float(brier_score_loss(labels, probs)),
    }


# --------------------------------------------------------------------------- tables
def coverage_table(
    y_true: Any,
    y_pred: Any,
    lower: Mapping[float, Any],
    upper: Mapping[float, Any],
) -> pd.DataFrame:
    """Coverage and mean width per level, by predicted decile and by zero / positive actual.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
        Actual and predicted spend.
    lower, upper : mapping of level to array-like of shape (n,)
        Interval bounds per level.

    Returns
    -------
    pandas.DataFrame
        Tidy table with columns ``group, level, n, coverage, mean_width``. Groups are
        ``decile_1`` (lowest predictions) ... ``decile_10``, ``actual_zero``,
        ``actual_positive`` and ``all``; empty groups are left out.
    """
    actual, pred = _pair(y_true, y_pred)
    actual, bounds = _bounds(actual, lower, upper)
    # Limitation: coverage is per customer, so tied predictions cannot be averaged across
    # a decile boundary as in the spend tables; they are split in input order.
    decile = decile_index(pred)
    groups = [(f"decile_{d}", decile == d) for d in range(1, N_DECILES + 1)]
    groups += [("actual_zero", actual == 0), ("actual_positive", actual > 0)]
    groups.append(("all", np.ones(actual.size, dtype=bool)))

    rows = []
    for level, (lo, hi) in bounds.items():
        hit = (actual >= lo) & (actual <= hi)
        width = hi - lo
        for name, mask in groups:
            if mask.any():
                rows.append(
                    {
                        "group": name,
                        "level": level,
                        "n": int(mask.sum()),
                        "coverage": float(hit[mask].mean()),
                        "mean_width": float(width[mask].mean()),
                    }
                )
    return pd.DataFrame(rows, columns=["group", "level", "n", "coverage", "mean_width"])


def decile_table(y_true: Any, y_pred: Any) -> pd.DataFrame:
    """Actual against predicted spend per predicted decile.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
        Actual and predicted spend.

    Returns
    -------
    pandas.DataFrame
        One row per non-empty decile (1 = lowest predictions), columns ``decile, n,
        actual_sum, predicted_sum, actual_mean, predicted_mean``. Customers with tied
        predictions that straddle a decile boundary share their actual spend evenly.
    """
    actual, pred = _pair(y_true, y_pred)
    table = _decile_sums(actual, pred)
    table["actual_mean"] = table["actual_sum"] / table["n"]
    table["predicted_mean"] = table["predicted_sum"] / table["n"]
    return table.reset_index()


def reliability_table(churned: Any, prob: Any, n_bins: int = 10) -> pd.DataFrame:
    """Observed churn rate against mean predicted probability in equal-width bins.

    Parameters
    ----------
    churned : array-like of bool or 0/1, shape (n,)
        Observed churn.
    prob : array-like of shape (n,)
        Predicted churn probability.
    n_bins : int
        Number of equal-width bins on [0, 1]; the last bin includes 1.

    Returns
    -------
    pandas.DataFrame
        One row per non-empty bin: ``bin, bin_lower, bin_upper, n, mean_prob,
        observed_rate``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    labels, probs = _binary(churned, prob)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, probs, side="right") - 1, 0, n_bins - 1)
    frame = pd.DataFrame({"bin": bins, "prob": probs, "churned": labels})
    table = frame.groupby("bin").agg(
        n=("prob", "size"), mean_prob=("prob", "mean"), observed_rate=("churned", "mean")
    )
    table.insert(0, "bin_upper", edges[table.index + 1])
    table.insert(0, "bin_lower", edges[table.index])
    return table.reset_index()
