"""Tests for clv_training.intervals: coverage on simulated zero-inflated spend."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from clv_training.intervals import ConformalIntervals


def simulate(n: int, seed: int, heteroscedastic: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Zero-inflated gamma spend with a customer-specific mean; returns (true mean, spend).

    The zero share falls as the mean rises. With ``heteroscedastic`` the gamma shape shrinks
    for high-value customers, so their spend is relatively noisier than everyone else's.
    """
    rng = np.random.default_rng(seed)
    mean = rng.lognormal(3.0, 1.2, n)
    p_zero = np.clip(0.7 - 0.1 * np.log1p(mean / 20.0), 0.05, 0.9)
    shape = 2.0 / (1.0 + mean / 50.0) if heteroscedastic else np.full(n, 2.0)
    buys = rng.random(n) > p_zero
    spend = np.where(buys, rng.gamma(shape, mean / (1.0 - p_zero) / shape), 0.0)
    return mean, spend


def deciles(pred: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.quantile(pred, np.linspace(0, 1, 11)[1:-1]), pred)


def covered(y: np.ndarray, bounds: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    lower, upper = bounds
    return (y >= lower) & (y <= upper)


@pytest.fixture(scope="module")
def fitted() -> tuple[ConformalIntervals, np.ndarray, np.ndarray]:
    pred_cal, y_cal = simulate(20_000, seed=1)
    pred_test, y_test = simulate(20_000, seed=2)
    return ConformalIntervals(levels=(0.8, 0.9), n_bins=10).fit(pred_cal, y_cal), pred_test, y_test


@pytest.mark.parametrize("score", ["scaled", "residual"])
def test_coverage_on_fresh_sample_is_nominal(score: str) -> None:
    pred_cal, y_cal = simulate(20_000, seed=1)
    pred_test, y_test = simulate(20_000, seed=2)
    bounds = ConformalIntervals(score=score).fit(pred_cal, y_cal).predict(pred_test)
    assert set(bounds) == {0.8, 0.9}
    for level in (0.8, 0.9):
        assert abs(covered(y_test, bounds[level]).mean() - level) <= 0.02


def test_bounds_ordered_nested_and_non_negative(fitted) -> None:
    ci, pred, _ = fitted
    bounds = ci.predict(pred)
    lo80, hi80 = bounds[0.8]
    lo90, hi90 = bounds[0.9]
    assert np.all(lo90 >= 0)
    assert np.all(lo90 <= lo80)
    assert np.all(lo80 <= pred)
    assert np.all(pred <= hi80)
    assert np.all(hi80 <= hi90)
    # Some customers get a positive lower bound: the intervals are not all [0, upper].
    assert np.mean(lo80 > 0) > 0.05


def test_widths_adapt_to_the_customer(fitted) -> None:
    ci, pred, _ = fitted
    lower, upper = ci.predict(pred)[0.9]
    width = upper - lower
    assert np.unique(np.round(width, 6)).size > 1000
    # Higher-value customers get wider intervals.
    top, bottom = pred >= np.quantile(pred, 0.9), pred <= np.quantile(pred, 0.1)
    assert width[top].mean() > 5 * width[bottom].mean()


def test_per_bin_coverage_roughly_nominal(fitted) -> None:
    ci, pred, y = fitted
    bounds = ci.predict(pred)
    decile = deciles(pred)
    for level in (0.8, 0.9):
        hits = covered(y, bounds[level])
        per_decile = np.array([hits[decile == d].mean() for d in range(10)])
        # 2,000 customers per decile: sampling sd of coverage is about 0.009.
        assert np.all(np.abs(per_decile - level) <= 0.05), per_decile


@pytest.mark.parametrize("score", ["scaled", "residual"])
def test_mondrian_bins_fix_high_value_coverage(score: str) -> None:
    pred_cal, y_cal = simulate(20_000, seed=3, heteroscedastic=True)
    pred_test, y_test = simulate(20_000, seed=4, heteroscedastic=True)
    top = deciles(pred_test) == 9

    global_bounds = ConformalIntervals(n_bins=1, score=score).fit(pred_cal, y_cal)
    mondrian = ConformalIntervals(n_bins=10, score=score).fit(pred_cal, y_cal)
    global_top = covered(y_test, global_bounds.predict(pred_test)[0.9])[top].mean()
    mondrian_top = covered(y_test, mondrian.predict(pred_test)[0.9])[top].mean()

    assert global_top < 0.8  # one global quantile badly under-covers the top decile
    assert abs(mondrian_top - 0.9) <= 0.03


def test_zero_heavy_and_tied_predictions_give_valid_bins() -> None:
    rng = np.random.default_rng(5)
    n = 3_000
    # 70 % of predictions are exactly 0, then a few distinct values with many ties.
    pred = np.where(rng.random(n) < 0.7, 0.0, rng.choice([5.0, 20.0, 80.0], size=n))
    y = np.where(rng.random(n) < 0.5, 0.0, rng.gamma(2.0, (pred + 1.0) / 2.0))
    ci = ConformalIntervals(n_bins=10).fit(pred, y)
    info = ci.describe()
    assert all(entry["n"] >= 30 for entry in info["bins"])
    # Tied predictions share a bin: at most one bin per distinct value.
    assert len(info["bins"]) <= 4
    frame = ci.to_frame(pred)
    assert np.all(np.isfinite(frame.to_numpy()))
    assert np.all(frame["clv_lower_90"] >= 0)
    # Zero predictions still get a positive upper bound (they may buy).
    assert np.all(frame.loc[pred == 0, "clv_upper_90"] > 0)


def test_small_bins_are_merged() -> None:
    rng = np.random.default_rng(6)
    pred = rng.gamma(2.0, 10.0, 200)
    y = rng.gamma(2.0, pred / 2.0)
    info = ConformalIntervals(n_bins=10, min_bin_size=30).fit(pred, y).describe()
    counts = [entry["n"] for entry in info["bins"]]
    assert sum(counts) == 200
    assert min(counts) >= 30
    # Ten bins of 20: each small bin merges with its smaller neighbour, pairwise.
    assert counts == [40] * 5


def test_all_predictions_equal_gives_one_bin() -> None:
    rng = np.random.default_rng(7)
    pred = np.full(100, 12.0)
    y = rng.gamma(2.0, 6.0, 100)
    ci = ConformalIntervals().fit(pred, y)
    assert len(ci.describe()["bins"]) == 1
    lower, upper = ci.predict(np.array([0.0, 12.0, 500.0]))[0.8]
    assert np.all(lower <= [0.0, 12.0, 500.0]) and np.all(upper >= [0.0, 12.0, 500.0])


def test_finite_sample_quantile_rank() -> None:
    # Residual score, one bin, residuals 1..99 in some order: for level 0.8 the upper
    # offset is the ceil(100 * 0.9) = 90th smallest and the lower one the floor(100 * 0.1)
    # = 10th smallest residual.
    residuals = np.random.default_rng(8).permutation(np.arange(1.0, 100.0)) - 50.0
    pred = np.full(99, 100.0)
    ci = ConformalIntervals(levels=(0.8,), n_bins=1, score="residual").fit(pred, pred + residuals)
    entry = ci.describe()["bins"][0]
    assert entry["offset_upper_80"] == pytest.approx(90.0 - 50.0)
    assert entry["offset_lower_80"] == pytest.approx(10.0 - 50.0)
    lower, upper = ci.predict([100.0])[0.8]
    assert lower[0] == pytest.approx(60.0) and upper[0] == pytest.approx(140.0)


def test_to_frame_columns_index_and_pickle(fitted) -> None:
    import pandas as pd

    ci, pred, _ = fitted
    series = pd.Series(pred[:5], index=[f"c{i}" for i in range(5)])
    frame = ci.to_frame(series)
    assert list(frame.columns) == ["clv_lower_80", "clv_upper_80", "clv_lower_90", "clv_upper_90"]
    assert list(frame.index) == list(series.index)
    clone = pickle.loads(pickle.dumps(ci))
    pd.testing.assert_frame_equal(clone.to_frame(series), frame)
    info = ci.describe()
    assert info["levels"] == [0.8, 0.9] and info["n_calibration"] == 20_000
    assert {"pred_above", "pred_at_most", "n", "offset_upper_90"} <= set(info["bins"][0])


def test_too_small_calibration_set_raises() -> None:
    with pytest.raises(ValueError, match="too small"):
        ConformalIntervals().fit(np.ones(49), np.ones(49))
    # A very high level needs more customers for a finite upper bound.
    with pytest.raises(ValueError, match="need at least 199"):
        ConformalIntervals(levels=(0.99,)).fit(np.ones(100), np.ones(100))


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="same calibration customers"):
        ConformalIntervals().fit(np.ones(60), np.ones(61))
    with pytest.raises(ValueError, match="non-finite"):
        ConformalIntervals().fit(np.r_[np.ones(59), np.nan], np.ones(60))
    with pytest.raises(ValueError, match="between 0 and 1"):
        ConformalIntervals(levels=(0.8, 1.0)).fit(np.ones(60), np.ones(60))
    with pytest.raises(RuntimeError, match="not fitted"):
        ConformalIntervals().predict([1.0])


def test_levels_from_config_in_any_order() -> None:
    from omegaconf import OmegaConf

    levels = OmegaConf.create({"levels": [0.9, 0.8]}).levels
    pred, y = simulate(500, seed=9)
    ci = ConformalIntervals(levels=levels, n_bins=5).fit(pred, y)
    assert ci.levels == (0.9, 0.8)
    assert list(ci.to_frame(pred[:2]).columns) == [
        "clv_lower_80", "clv_upper_80", "clv_lower_90", "clv_upper_90"
    ]
    assert pickle.loads(pickle.dumps(ci)).describe() == ci.describe()
