"""Evaluation plots, drawn off-screen.

Each function builds a :class:`matplotlib.figure.Figure` attached to an Agg canvas, without
pyplot, so nothing opens a window, the global backend is left alone and no figure piles
up in pyplot's registry. The caller saves or logs the figure (``fig.savefig(...)``,
``mlflow.log_figure(fig, ...)``); nothing here closes it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from clv_training.evaluation.metrics import (
    decile_table,
    gains_curve,
    reliability_table,
)

logger = logging.getLogger(__name__)

DPI = 100
PREDICTED_COLOR = "#4C72B0"
ACTUAL_COLOR = "#DD8452"


def _figure(width: float = 7.0, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_decile_calibration(y_true: Any, y_pred: Any, title: str) -> Figure:
    """Mean predicted against mean actual spend per predicted decile, as paired bars.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
        Actual and predicted spend.
    title : str
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    table = decile_table(y_true, y_pred)
    fig = _figure()
    ax = fig.add_subplot()
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["predicted_mean"], 0.4, label="predicted", color=PREDICTED_COLOR)
    ax.bar(x + 0.2, table["actual_mean"], 0.4, label="actual", color=ACTUAL_COLOR)
    ax.set_xticks(x, [str(d) for d in table["decile"]])
    ax.set_xlabel("Predicted-value decile (1 = lowest)")
    ax.set_ylabel("Mean spend per customer")
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_gains_curve(
    curves: Mapping[str, tuple[Any, Any]], title: str = "Cumulative gains"
) -> Figure:
    """Cumulative gains of one or more models, with the perfect and random rankings.

    Parameters
    ----------
    curves : mapping of name to (y_true, y_pred)
        One curve per model. The perfect-ranking line is drawn from each distinct
        ``y_true`` (once when all curves share the same actual values).
    title : str
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not curves:
        raise ValueError("curves is empty; give at least one (y_true, y_pred) pair.")
    fig = _figure(6.0, 5.0)
    ax = fig.add_subplot()

    perfect_drawn: list[np.ndarray] = []
    for name, (y_true, y_pred) in curves.items():
        actual = np.asarray(y_true, dtype=np.float64).reshape(-1)
        share_customers, share_spend = gains_curve(actual, y_pred)
        ax.plot(share_customers, share_spend, label=name, linewidth=1.8)
        if not any(np.array_equal(actual, seen) for seen in perfect_drawn):
            label = "perfect" if not perfect_drawn else f"perfect ({name})"
            best_x, best_y = gains_curve(actual, actual)
            ax.plot(best_x, best_y, linestyle="--", color="0.3", linewidth=1.0, label=label)
            perfect_drawn.append(actual)
    ax.plot([0, 1], [0, 1], linestyle=":", color="0.5", label="random")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("Share of customers, ranked by predicted value")
    ax.set_ylabel("Share of actual spend captured")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def plot_feature_importance(
    importance: pd.Series, title: str, top_n: int = 20
) -> Figure:
    """Horizontal bars of the ``top_n`` most important features.

    Parameters
    ----------
    importance : pandas.Series
        Importance per feature name (index).
    title : str
        Figure title.
    top_n : int
        Number of features shown (largest absolute importance first).

    Returns
    -------
    matplotlib.figure.Figure
    """
    values = pd.Series(importance, dtype=np.float64).dropna()
    shown = values.reindex(values.abs().sort_values(ascending=False).index[:top_n])
    fig = _figure(7.0, max(2.5, 0.3 * len(shown) + 1.2))
    ax = fig.add_subplot()
    if shown.empty:
        ax.text(0.5, 0.5, "no feature importance", ha="center", va="center")
    else:
        ordered = shown.iloc[::-1]  # largest at the top
        ax.barh([str(name) for name in ordered.index], ordered.to_numpy(), color=PREDICTED_COLOR)
    ax.set_xlabel("Importance")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_coverage(coverage_table: pd.DataFrame, nominal_levels: Sequence[float]) -> Figure:
    """Empirical interval coverage per group against the nominal levels.

    Parameters
    ----------
    coverage_table : pandas.DataFrame
        Output of :func:`clv_training.evaluation.metrics.coverage_table` (columns
        ``group, level, n, coverage, mean_width``).
    nominal_levels : sequence of float
        Levels drawn as horizontal reference lines.

    Returns
    -------
    matplotlib.figure.Figure
        Coverage of each level over the predicted-value deciles, then the ``actual_zero``,
        ``actual_positive`` and ``all`` groups.
    """
    missing = {"group", "level", "coverage"} - set(coverage_table.columns)
    if missing:
        raise ValueError(f"coverage_table lacks columns {sorted(missing)}.")
    groups = list(dict.fromkeys(coverage_table["group"]))
    labels = [g.replace("decile_", "D").replace("actual_", "actual ") for g in groups]
    x = np.arange(len(groups))

    fig = _figure(8.0, 4.5)
    ax = fig.add_subplot()
    colors = [PREDICTED_COLOR, ACTUAL_COLOR, "#55A868", "#C44E52", "#8172B3"]
    for i, (level, rows) in enumerate(coverage_table.groupby("level", sort=True)):
        color = colors[i % len(colors)]
        by_group = rows.set_index("group")["coverage"].reindex(groups)
        pct = int(round(float(level) * 100))
        ax.plot(x, by_group.to_numpy(), marker="o", color=color, label=f"{pct}% interval")
    for j, level in enumerate(sorted(nominal_levels)):
        ax.axhline(
            level, linestyle="--", linewidth=1.0, color=colors[j % len(colors)],
            label=f"nominal {int(round(level * 100))}%",
        )
    n_deciles = sum(g.startswith("decile_") for g in groups)
    if 0 < n_deciles < len(groups):
        ax.axvline(n_deciles - 0.5, color="0.7", linewidth=0.8)
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("Group (D1-D10: predicted-value deciles, low to high)")
    ax.set_ylabel("Empirical coverage")
    ax.set_title("Prediction-interval coverage")
    ax.legend(loc="lower left", fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_reliability(
    churned: Any, prob: Any, title: str, n_bins: int = 10
) -> Figure:
    """Reliability diagram of churn probabilities, with the count per bin below it.

    Parameters
    ----------
    churned : array-like of bool or 0/1, shape (n,)
        Observed churn.
    prob : array-like of shape (n,)
        Predicted churn probability.
    title : str
        Figure title.
    n_bins : int
        Equal-width probability bins.

    Returns
    -------
    matplotlib.figure.Figure
    """
    table = reliability_table(churned, prob, n_bins=n_bins)
    fig = _figure(6.0, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], linestyle="--", color="0.5", label="perfectly calibrated")
    top.plot(table["mean_prob"], table["observed_rate"], marker="o", color=PREDICTED_COLOR,
             label="model")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("Observed churn rate")
    top.set_title(title)
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    width = 1.0 / n_bins
    bottom.bar(table["bin_lower"] + width / 2, table["n"], width * 0.9, color=ACTUAL_COLOR)
    bottom.set_xlabel("Predicted churn probability")
    bottom.set_ylabel("Customers")
    return fig
