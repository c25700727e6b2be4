"""Tests for clv_training.segments: trend labels, value segments, at-risk flag."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clv_training.segments import SegmentRule, trend_labels


def test_trend_labels_thresholds_and_young_customers() -> None:
    trend = [0.5, 0.2, 0.0, -0.2, -0.6, 0.9, -0.9, np.nan]
    T = [200, 200, 200, 200, 200, 30, 89, 200]
    labels = trend_labels(trend, T, trend_window_days=90, growing_above=0.2,
                          declining_below=-0.2)
    # Bounds are "stable" (strict comparisons); younger than 90 days is "stable"; NaN too.
    assert labels.tolist() == [
        "growing", "stable", "stable", "stable", "declining", "stable", "stable", "stable"
    ]


def test_trend_labels_customer_exactly_window_old_is_labelled() -> None:
    labels = trend_labels([0.5, -0.5], [90, 90], 90, 0.2, -0.2)
    assert labels.tolist() == ["growing", "declining"]


def test_trend_labels_from_hand_made_histories() -> None:
    # Spend rates per day: recent window (last 90 days) vs earlier history.
    histories = {
        "doubling": (2.0, 1.0, 400),   # trend (2-1)/(2+1) = 0.33
        "steady": (1.0, 1.0, 400),     # 0
        "fading": (0.0, 1.0, 400),     # -1
        "newcomer": (5.0, 0.0, 60),    # younger than the window
    }
    recent = np.array([h[0] for h in histories.values()])
    earlier = np.array([h[1] for h in histories.values()])
    trend = (recent - earlier) / (recent + earlier)
    T = [h[2] for h in histories.values()]
    labels = trend_labels(trend, T, 90, 0.2, -0.2)
    assert dict(zip(histories, labels, strict=True)) == {
        "doubling": "growing", "steady": "stable", "fading": "declining", "newcomer": "stable"
    }


def test_trend_labels_bad_input() -> None:
    with pytest.raises(ValueError, match="must not exceed"):
        trend_labels([0.0], [100], 90, -0.3, 0.3)
    with pytest.raises(ValueError, match="values but T"):
        trend_labels([0.0, 0.1], [100], 90, 0.2, -0.2)


def test_segment_thresholds_and_boundaries() -> None:
    rule = SegmentRule(high_quantile=0.8, medium_quantile=0.5, at_risk_churn_probability=0.5)
    rule.fit(np.arange(0.0, 101.0))  # quantiles 80 and 50 exactly
    info = rule.thresholds()
    assert info["high_threshold"] == pytest.approx(80.0)
    assert info["medium_threshold"] == pytest.approx(50.0)
    assert not info["high_strict"] and not info["medium_strict"]

    clv = pd.Series([80.0, 79.99, 50.0, 49.99, 500.0], index=list("abcde"))
    out = rule.assign(clv, [0.5, 0.9, 0.9, 0.9, 0.49])
    assert list(out.index) == list("abcde")
    assert out["segment"].tolist() == ["high", "medium", "medium", "low", "high"]
    # At risk: high and churn probability >= 0.5 (bound included).
    assert out["at_risk"].tolist() == [True, False, False, False, False]
    assert out["at_risk"].dtype == bool


def test_segment_shares_on_training_window() -> None:
    clv_train = np.random.default_rng(0).gamma(1.5, 40.0, 10_000)
    rule = SegmentRule(0.8, 0.5, 0.5).fit(clv_train)
    shares = rule.assign(clv_train, np.zeros(10_000))["segment"].value_counts(normalize=True)
    assert shares["high"] == pytest.approx(0.2, abs=0.001)
    assert shares["medium"] == pytest.approx(0.3, abs=0.001)
    assert shares["low"] == pytest.approx(0.5, abs=0.001)


def test_zero_heavy_predictions_keep_zeros_low() -> None:
    # 60 % predicted exactly 0: the median threshold is 0; zeros must not be "medium".
    clv_train = np.r_[np.zeros(60), np.arange(1.0, 41.0)]
    rule = SegmentRule(0.8, 0.5, 0.5).fit(clv_train)
    assert rule.thresholds()["medium_threshold"] == 0.0
    assert rule.thresholds()["medium_strict"]
    out = rule.assign([0.0, 0.5, 40.0], [0.9, 0.9, 0.9])
    assert out["segment"].tolist() == ["low", "medium", "high"]
    assert out["at_risk"].tolist() == [False, False, True]


def test_missing_churn_probability_is_not_at_risk() -> None:
    rule = SegmentRule().fit(np.arange(10.0))
    out = rule.assign([100.0, 100.0], [np.nan, 0.8])
    assert out["at_risk"].tolist() == [False, True]


def test_segment_rule_errors() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        SegmentRule().assign([1.0], [0.1])
    with pytest.raises(ValueError, match="medium_quantile <= segments.high_quantile"):
        SegmentRule(high_quantile=0.4, medium_quantile=0.5).fit([1.0, 2.0])
    with pytest.raises(ValueError, match="empty"):
        SegmentRule().fit([])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SegmentRule().fit([1.0, 2.0]).assign([1.0], [1.5])
