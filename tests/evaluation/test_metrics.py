"""Tests for clv_training.evaluation.metrics on hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from clv_training.evaluation.metrics import (
    churn_metrics,
    coverage_table,
    decile_table,
    gains_curve,
    interval_metrics,
    normalized_gini,
    regression_metrics,
    reliability_table,
)

REGRESSION_KEYS = {
    "val_rmse", "val_mae", "val_spearman", "val_gini", "val_decile_mape",
    "val_top_decile_capture", "val_total_error",
}


def test_regression_metrics_keys_and_simple_values() -> None:
    out = regression_metrics([0.0, 10.0, 20.0, 30.0], [5.0, 5.0, 25.0, 25.0], "val")
    assert set(out) == REGRESSION_KEYS
    assert out["val_rmse"] == pytest.approx(5.0)
    assert out["val_mae"] == pytest.approx(5.0)
    assert out["val_total_error"] == pytest.approx(0.0)
    expected = spearmanr([0, 10, 20, 30], [5, 5, 25, 25]).statistic
    assert out["val_spearman"] == pytest.approx(expected)
    assert all(isinstance(v, float) for v in out.values())


def test_decile_mape_capture_and_total_error_by_hand() -> None:
    pred = np.arange(1.0, 21.0)  # deciles of two customers: {1, 2}, {3, 4}, ..., {19, 20}
    actual = 2.0 * pred
    actual[:2] = 0.0  # the lowest decile has no actual spend: left out of the mean
    out = regression_metrics(actual, pred, "test")
    assert out["test_decile_mape"] == pytest.approx(0.5)  # |2p - p| / 2p in every decile
    total = 2.0 * (pred.sum() - 3.0)
    assert out["test_top_decile_capture"] == pytest.approx(2.0 * (19 + 20) / total)
    assert out["test_total_error"] == pytest.approx((pred.sum() - total) / total)


def test_gini_perfect_reversed_constant() -> None:
    actual = np.array([0.0, 10.0, 20.0, 30.0])
    assert normalized_gini(actual, [1, 2, 3, 4]) == pytest.approx(1.0)
    assert normalized_gini(actual, [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert normalized_gini(actual, [7, 7, 7, 7]) == 0.0


def test_gini_ties_are_averaged_not_ordered_in_the_models_favour() -> None:
    # Rows listed best-first with a constant prediction: a naive stable sort would give 1.
    assert normalized_gini([30.0, 20.0, 10.0, 0.0], [1.0, 1.0, 1.0, 1.0]) == 0.0
    # Partial ties: tied pairs are credited their mean (5 and 25), by hand 0.8.
    first = normalized_gini([0.0, 10.0, 20.0, 30.0], [1.0, 1.0, 2.0, 2.0])
    second = normalized_gini([10.0, 0.0, 30.0, 20.0], [1.0, 1.0, 2.0, 2.0])
    assert first == pytest.approx(0.8)
    assert second == pytest.approx(0.8)


def test_gini_matches_mean_over_random_tie_orders() -> None:
    rng = np.random.default_rng(0)
    actual = rng.gamma(1.0, 10.0, 200)
    pred = np.round(actual + rng.normal(0, 8, 200), -1)  # coarse: many ties
    expected = np.mean([
        normalized_gini(actual, pred + rng.uniform(0, 1e-6, 200)) for _ in range(300)
    ])
    assert normalized_gini(actual, pred) == pytest.approx(expected, abs=0.005)


def test_undefined_metrics_rules() -> None:
    out = regression_metrics([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], "v")
    assert out["v_spearman"] == 0.0 and out["v_gini"] == 0.0
    assert math.isnan(out["v_decile_mape"])
    assert math.isnan(out["v_top_decile_capture"]) and math.isnan(out["v_total_error"])
    assert regression_metrics([1.0, 2.0, 3.0], [5.0, 5.0, 5.0], "v")["v_spearman"] == 0.0


def test_regression_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="values but y_pred"):
        regression_metrics([1.0, 2.0], [1.0], "v")
    with pytest.raises(ValueError, match="non-finite"):
        regression_metrics([1.0, np.nan], [1.0, 2.0], "v")


def test_interval_metrics_by_hand() -> None:
    y = np.array([0.0, 5.0, 10.0, 20.0])
    lower = {0.8: np.array([0.0, 0.0, 0.0, 0.0]), 0.9: np.array([0.0, 0.0, 0.0, 21.0])}
    upper = {0.8: np.array([1.0, 4.0, 10.0, 30.0]), 0.9: np.array([2.0, 6.0, 12.0, 31.0])}
    out = interval_metrics(y, lower, upper, "test")
    assert set(out) == {
        "test_coverage_80", "test_width_80", "test_winkler_80",
        "test_coverage_90", "test_width_90", "test_winkler_90",
    }
    assert out["test_coverage_80"] == pytest.approx(0.75)
    assert out["test_width_80"] == pytest.approx(11.25)
    assert out["test_winkler_80"] == pytest.approx(11.25 + 2 / 0.2 * 1.0 / 4)  # 5 above 4
    assert out["test_coverage_90"] == pytest.approx(0.75)
    assert out["test_width_90"] == pytest.approx((2 + 6 + 12 + 10) / 4)
    assert out["test_winkler_90"] == pytest.approx(7.5 + 2 / 0.1 * 1.0 / 4)  # 20 below 21


def test_interval_metrics_rejects_mismatched_levels() -> None:
    with pytest.raises(ValueError, match="levels"):
        interval_metrics([1.0], {0.8: [0.0]}, {0.9: [2.0]}, "v")
    with pytest.raises(ValueError, match="lower > upper"):
        interval_metrics([1.0], {0.8: [3.0]}, {0.8: [2.0]}, "v")


def test_churn_metrics_by_hand() -> None:
    out = churn_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], "test")
    assert out["test_churn_auc"] == pytest.approx(0.75)
    assert out["test_churn_brier"] == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
    one_class = churn_metrics([True, True], [0.9, 0.8], "v")
    assert math.isnan(one_class["v_churn_auc"])
    assert one_class["v_churn_brier"] == pytest.approx((0.01 + 0.04) / 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        churn_metrics([0, 1], [0.5, 1.2], "v")


def test_decile_table_by_hand() -> None:
    pred = np.arange(1.0, 21.0)
    actual = np.r_[np.zeros(10), np.full(10, 3.0)]
    table = decile_table(actual, pred)
    assert list(table.columns) == [
        "decile", "n", "actual_sum", "predicted_sum", "actual_mean", "predicted_mean"
    ]
    assert table["decile"].tolist() == list(range(1, 11))
    assert table["n"].tolist() == [2] * 10
    assert table["actual_sum"].tolist() == [0.0] * 5 + [6.0] * 5
    assert table.loc[9, "predicted_sum"] == pytest.approx(39.0)
    assert table.loc[9, "predicted_mean"] == pytest.approx(19.5)


def test_decile_table_unequal_sizes_and_tiny_input() -> None:
    table = decile_table(np.ones(23), np.arange(23.0))
    assert table["n"].sum() == 23 and set(table["n"]) == {2, 3}
    small = decile_table([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    assert small["n"].tolist() == [1, 1, 1]


def test_coverage_table_groups_by_hand() -> None:
    pred = np.arange(1.0, 21.0)
    actual = np.r_[np.zeros(10), pred[10:]]
    lower = {0.8: np.zeros(20)}
    upper = {0.8: np.r_[np.ones(10), pred[10:] - 1.0]}  # covers the zeros only
    table = coverage_table(actual, pred, lower, upper)
    assert list(table.columns) == ["group", "level", "n", "coverage", "mean_width"]
    by_group = table.set_index("group")
    assert by_group.loc["actual_zero", "coverage"] == 1.0
    assert by_group.loc["actual_zero", "n"] == 10
    assert by_group.loc["actual_positive", "coverage"] == 0.0
    assert by_group.loc["all", "coverage"] == pytest.approx(0.5)
    assert by_group.loc["decile_1", "mean_width"] == pytest.approx(1.0)
    assert by_group.loc["decile_10", "mean_width"] == pytest.approx(18.5)
    assert len(table) == 13 and set(table["level"]) == {0.8}


def test_reliability_table_by_hand() -> None:
    table = reliability_table([0, 1, 0, 1, 1], [0.05, 0.15, 0.15, 0.95, 1.0], n_bins=10)
    assert table["bin"].tolist() == [0, 1, 9]
    assert table["n"].tolist() == [1, 2, 2]
    assert table["observed_rate"].tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert table["mean_prob"].tolist() == pytest.approx([0.05, 0.15, 0.975])
    assert table["bin_lower"].tolist() == pytest.approx([0.0, 0.1, 0.9])
    assert table["bin_upper"].tolist() == pytest.approx([0.1, 0.2, 1.0])


def test_gains_curve_endpoints_and_ties() -> None:
    share_customers, share_spend = gains_curve([0.0, 10.0, 30.0], [1.0, 2.0, 3.0])
    assert share_customers.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert share_spend.tolist() == pytest.approx([0, 0.75, 1.0, 1.0])
    _, tied = gains_curve([40.0, 0.0], [1.0, 1.0])
    assert tied.tolist() == pytest.approx([0.0, 0.5, 1.0])


def test_metrics_accept_series() -> None:
    y = pd.Series([1.0, 2.0, 3.0, 4.0], index=list("abcd"))
    out = regression_metrics(y, y * 2, "s")
    assert out["s_total_error"] == pytest.approx(1.0)
    assert out["s_gini"] == pytest.approx(1.0)
