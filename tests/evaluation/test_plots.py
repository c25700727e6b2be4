"""Tests for clv_training.evaluation.plots: each returns a Figure that saves as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from clv_training.evaluation.metrics import coverage_table
from clv_training.evaluation.plots import (
    plot_coverage,
    plot_decile_calibration,
    plot_feature_importance,
    plot_gains_curve,
    plot_reliability,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def spend() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    pred = rng.gamma(1.5, 30.0, 500)
    actual = np.where(rng.random(500) < 0.4, 0.0, rng.gamma(2.0, pred / 2.0))
    return actual, pred


def saved_png(fig: Figure, path: Path) -> bytes:
    assert isinstance(fig, Figure)
    assert fig.axes, "figure has no axes"
    fig.savefig(path)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5_000
    return data


def test_decile_calibration(spend, tmp_path) -> None:
    actual, pred = spend
    fig = plot_decile_calibration(actual, pred, "Decile calibration")
    saved_png(fig, tmp_path / "deciles.png")
    ax = fig.axes[0]
    assert ax.get_title() == "Decile calibration"
    assert len(ax.patches) == 20  # predicted and actual bar for each of 10 deciles
    assert fig.dpi == 100


def test_gains_curve(spend, tmp_path) -> None:
    actual, pred = spend
    fig = plot_gains_curve({"model": (actual, pred), "noise": (actual, pred[::-1])})
    saved_png(fig, tmp_path / "gains.png")
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["model", "perfect", "noise", "random"]
    with pytest.raises(ValueError, match="empty"):
        plot_gains_curve({})


def test_feature_importance(tmp_path) -> None:
    importance = pd.Series({f"f{i}": float(i) for i in range(30)})
    fig = plot_feature_importance(importance, "Importance", top_n=5)
    saved_png(fig, tmp_path / "importance.png")
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert ticks == ["f25", "f26", "f27", "f28", "f29"]  # largest at the top
    empty = plot_feature_importance(pd.Series(dtype=float), "None")
    saved_png(empty, tmp_path / "empty.png")


def test_coverage(spend, tmp_path) -> None:
    actual, pred = spend
    lower = {0.8: pred * 0.2, 0.9: pred * 0.1}
    upper = {0.8: pred * 2.0, 0.9: pred * 3.0}
    table = coverage_table(actual, pred, lower, upper)
    fig = plot_coverage(table, [0.8, 0.9])
    saved_png(fig, tmp_path / "coverage.png")
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 2 + 2 + 1  # two levels, two nominal lines, a separator
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0] == "D1" and ticks[-3:] == ["actual zero", "actual positive", "all"]
    with pytest.raises(ValueError, match="lacks columns"):
        plot_coverage(table.drop(columns="coverage"), [0.8])


def test_reliability(tmp_path) -> None:
    rng = np.random.default_rng(1)
    prob = rng.random(400)
    churned = rng.random(400) < prob
    fig = plot_reliability(churned, prob, "Churn reliability")
    saved_png(fig, tmp_path / "reliability.png")
    assert len(fig.axes) == 2
    assert fig.axes[0].get_title() == "Churn reliability"


def test_plots_leave_the_backend_and_pyplot_alone(spend) -> None:
    import matplotlib.pyplot as plt

    before = (matplotlib.get_backend(), plt.get_fignums())
    plot_decile_calibration(*spend, "x")
    assert (matplotlib.get_backend(), plt.get_fignums()) == before
