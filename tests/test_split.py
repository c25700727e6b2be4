"""Cutoff plan, stacked examples and held-out customers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from clv_training.config import FeaturesConfig, SplitConfig
from clv_training.data import AMOUNT, CUSTOMER_ID, SOURCE_ROW, TIMESTAMP
from clv_training.features.build import feature_columns
from clv_training.split import (
    CutoffPlan,
    is_calibration_customer,
    make_examples,
    plan_cutoffs,
)

T = pd.Timestamp


# --------------------------------------------------------------------------- cutoffs


def test_cdnow_master_plan():
    plan = plan_cutoffs(T("1997-01-01"), T("1998-06-30"), 91, SplitConfig())
    assert plan.test == T("1998-03-31")
    assert plan.validation == T("1997-12-30")
    assert plan.train == (T("1997-04-01"), T("1997-07-01"), T("1997-09-30"))
    assert plan.observation_end == T("1998-06-30")
    assert plan.horizon_days == 91
    assert plan.tuning_cutoffs == plan.train
    assert plan.test_fit_cutoffs == (*plan.train, T("1997-12-30"))
    assert plan.final_cutoffs == (*plan.train, T("1997-12-30"), T("1998-03-31"))
    # every target window of a fit ends by the cutoff it is scored on
    horizon = pd.Timedelta(days=91)
    assert max(plan.tuning_cutoffs) + horizon <= plan.validation
    assert max(plan.test_fit_cutoffs) + horizon <= plan.test
    assert max(plan.final_cutoffs) + horizon == plan.observation_end


def test_cdnow_shorter_observation_still_has_two_train_cutoffs():
    plan = plan_cutoffs(T("1997-01-01"), T("1998-03-31"), 91, SplitConfig())
    assert plan.test == T("1997-12-30")
    assert plan.validation == T("1997-09-30")
    assert plan.train == (T("1997-04-01"), T("1997-07-01"))  # 1996-12-31 is too early


def test_plan_respects_step_max_and_min_history():
    cfg = SplitConfig(step_days=30, max_train_cutoffs=2, min_history_days=0)
    plan = plan_cutoffs(T("2020-01-01"), T("2020-12-31"), 60, cfg)
    assert plan.test == T("2020-11-01")
    # A step shorter than the horizon must not let the validation window reach into the
    # test window, nor a training window into validation.
    assert plan.validation == T("2020-09-02")
    assert plan.train == (T("2020-06-04"), T("2020-07-04"))
    horizon = pd.Timedelta(days=60)
    assert plan.validation + horizon <= plan.test
    assert all(c + horizon <= plan.validation for c in plan.train)

    # the earliest cutoff may sit exactly min_history_days after the first day
    cfg = SplitConfig(step_days=10, max_train_cutoffs=5, min_history_days=10)
    plan = plan_cutoffs(T("2020-01-01"), T("2020-02-20"), 10, cfg)
    assert plan.validation == T("2020-01-31")
    assert plan.train == (T("2020-01-11"), T("2020-01-21"))


def test_plan_normalizes_times_of_day():
    plan = plan_cutoffs(T("1997-01-01 13:00"), T("1998-06-30 23:59"), 91, SplitConfig())
    assert plan.test == T("1998-03-31")


def test_plan_without_room_for_a_train_cutoff_says_what_to_change():
    with pytest.raises(ValueError) as err:
        plan_cutoffs(T("1997-01-01"), T("1997-09-30"), 91, SplitConfig())
    message = str(err.value)
    for part in ("horizon_days=91", "1997-01-01", "1997-09-30", "split.min_history_days",
                 "split.step_days", "1997-03-02"):
        assert part in message


@pytest.mark.parametrize(
    ("horizon", "cfg", "match"),
    [
        (0, SplitConfig(), "horizon_days"),
        (91, SplitConfig(step_days=0), "step_days"),
        (91, SplitConfig(max_train_cutoffs=0), "max_train_cutoffs"),
        (91, SplitConfig(min_history_days=-1), "min_history_days"),
    ],
)
def test_plan_rejects_bad_settings(horizon, cfg, match):
    with pytest.raises(ValueError, match=match):
        plan_cutoffs(T("1997-01-01"), T("1998-06-30"), horizon, cfg)


def test_cutoff_plan_is_frozen():
    plan = plan_cutoffs(T("1997-01-01"), T("1998-06-30"), 91, SplitConfig())
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.test = T("2000-01-01")  # type: ignore[misc]
    assert isinstance(plan, CutoffPlan)


# -------------------------------------------------------------------------- examples


def _log(records):
    frame = pd.DataFrame(records, columns=[CUSTOMER_ID, TIMESTAMP, AMOUNT])
    frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP]).astype("datetime64[ns]")
    frame[AMOUNT] = frame[AMOUNT].astype(np.float64)
    frame[SOURCE_ROW] = np.arange(len(frame), dtype=np.int64)
    return frame


LOG = _log(
    [
        ("a", "2020-01-05", 10.0),
        ("a", "2020-02-01", 5.0),  # first cutoff day: history for cutoff 1, target for none
        ("a", "2020-02-15", 7.0),
        ("a", "2020-03-02", 100.0),  # cutoff 1 + 30: last day of its window
        ("b", "2020-01-20", 3.0),
        ("b", "2020-03-03", 4.0),  # after cutoff 1's window; in cutoff 2's window
        ("c", "2020-02-10", 8.0),  # first buys after cutoff 1
    ]
)
CFG = FeaturesConfig(windows=[30], trend_window_days=30)


def test_examples_join_features_with_targets_in_the_window_only():
    cutoffs = [T("2020-03-02"), T("2020-02-01"), T("2020-02-01")]
    ex = make_examples(LOG, cutoffs, 30, CFG)
    assert list(ex.columns) == (
        [CUSTOMER_ID, "cutoff"] + feature_columns(CFG) + ["target_spend", "target_occasions"]
    )
    assert str(ex["cutoff"].dtype) == "datetime64[ns]"
    assert ex[["cutoff", CUSTOMER_ID]].values.tolist() == [
        [T("2020-02-01"), "a"],
        [T("2020-02-01"), "b"],
        [T("2020-03-02"), "a"],
        [T("2020-03-02"), "b"],
        [T("2020-03-02"), "c"],
    ]
    first = ex[ex["cutoff"] == T("2020-02-01")].set_index(CUSTOMER_ID)
    assert first.loc["a", "target_spend"] == 107.0  # 02-15 and 03-02, not 02-01
    assert first.loc["a", "target_occasions"] == 2.0
    assert first.loc["a", "total_spend"] == 15.0
    assert first.loc["b", "target_spend"] == 0.0  # 03-03 is one day past the window
    assert first.loc["b", "target_occasions"] == 0.0

    second = ex[ex["cutoff"] == T("2020-03-02")].set_index(CUSTOMER_ID)
    assert second.loc["a", "target_spend"] == 0.0
    assert second.loc["a", "frequency"] == 3.0
    assert second.loc["b", "target_spend"] == 4.0
    assert second.loc["c", "T"] == 21.0
    assert not ex[["target_spend", "target_occasions"]].isna().any().any()


def test_examples_targets_do_not_leak_into_features():
    later = pd.concat(
        [LOG, _log([("a", "2020-02-02", 1e6), ("b", "2020-02-03", 1e6)])], ignore_index=True
    )
    base = make_examples(LOG, [T("2020-02-01")], 30, CFG)
    changed = make_examples(later, [T("2020-02-01")], 30, CFG)
    features = feature_columns(CFG)
    pd.testing.assert_frame_equal(changed[features], base[features], check_exact=True)
    assert (changed["target_spend"] - base["target_spend"]).tolist() == [1e6, 1e6]


def test_examples_warn_when_window_passes_last_day(caplog):
    with caplog.at_level("WARNING", logger="clv_training.split"):
        make_examples(LOG, [T("2020-02-20")], 30, CFG)
    assert "ends after the last transaction day" in caplog.text


def test_examples_need_a_cutoff():
    with pytest.raises(ValueError, match="cutoff"):
        make_examples(LOG, [], 30, CFG)


# ----------------------------------------------------------------- held-out customers


def test_calibration_customers_are_stable_and_order_free():
    ids = pd.Series([f"{i:05d}" for i in range(4000)])
    flags = is_calibration_customer(ids, 0.25, seed=42)
    assert flags.dtype == bool
    assert flags.shape == (4000,)
    assert 0.22 < flags.mean() < 0.28

    order = np.random.default_rng(0).permutation(len(ids))
    shuffled = is_calibration_customer(ids.iloc[order].reset_index(drop=True), 0.25, seed=42)
    np.testing.assert_array_equal(shuffled, flags[order])

    # the same customer is held out wherever (and however often) it appears
    repeated = pd.Series(["00007", "00001", "00007"])
    got = is_calibration_customer(repeated, 0.25, seed=42)
    assert got[0] == got[2] == flags[7]
    assert got[1] == flags[1]

    other_seed = is_calibration_customer(ids, 0.25, seed=43)
    assert (other_seed != flags).any()
    # exact strings: "7" and "00007" are different customers with independent draws
    assert is_calibration_customer(pd.Series(["7", "00007"]), 1.0, 1).all()


def test_calibration_fraction_edges_and_bounds():
    ids = pd.Series(["a", "b", "c"])
    assert not is_calibration_customer(ids, 0.0, seed=1).any()
    assert is_calibration_customer(ids, 1.0, seed=1).all()
    with pytest.raises(ValueError, match="calibration_fraction"):
        is_calibration_customer(ids, 1.5, seed=1)
