"""Features, occasions and targets at a cutoff on hand-made histories."""

from __future__ import annotations

import math
from importlib.metadata import PackageNotFoundError, distribution

import duckdb
import numpy as np
import pandas as pd
import pytest

from clv_training.config import FeaturesConfig
from clv_training.data import AMOUNT, CUSTOMER_ID, SOURCE_ROW, TIMESTAMP
from clv_training.features.build import (
    build_features,
    build_occasions,
    build_targets,
    connect_duckdb,
    feature_columns,
)

CFG = FeaturesConfig(windows=[30, 90], trend_window_days=90)
CUTOFF = pd.Timestamp("2020-06-30")


def rows(records: list[tuple[str, str, float]]) -> pd.DataFrame:
    """Prepared transactions from (customer_id, 'YYYY-MM-DD[ HH:MM]', amount) records."""
    frame = pd.DataFrame(records, columns=[CUSTOMER_ID, TIMESTAMP, AMOUNT])
    frame[CUSTOMER_ID] = frame[CUSTOMER_ID].astype(str)
    frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], format="ISO8601").astype(
        "datetime64[ns]"
    )
    frame[AMOUNT] = frame[AMOUNT].astype(np.float64)
    frame[SOURCE_ROW] = np.arange(len(frame), dtype=np.int64)
    return frame


def day(offset: int, time: str = "") -> str:
    """The day ``offset`` days after the cutoff (negative: before), as text."""
    text = str((CUTOFF + pd.Timedelta(days=offset)).date())
    return f"{text} {time}" if time else text


# ---------------------------------------------------------------------------- occasions


def test_rows_of_one_day_are_one_occasion_with_the_net_sum():
    """DATA_CASES 1: basket lines and a refund on one day are one occasion."""
    log = rows(
        [
            ("c1", "2020-06-01 09:00", 10.0),
            ("c1", "2020-06-01 13:30", 5.0),
            ("c1", "2020-06-01 23:59", -3.0),
            ("c1", "2020-06-05 08:00", 4.0),
            ("c1", "2020-06-05 08:01", 6.0),
        ]
    )
    occasions = build_occasions(log)
    assert occasions[CUSTOMER_ID].tolist() == ["c1", "c1"]
    assert occasions["day"].tolist() == [pd.Timestamp("2020-06-01"), pd.Timestamp("2020-06-05")]
    assert occasions[AMOUNT].tolist() == [12.0, 10.0]
    assert occasions["n_rows"].tolist() == [3, 2]
    assert str(occasions["day"].dtype) == "datetime64[ns]"

    f = build_features(log, pd.Timestamp("2020-06-10"), CFG).loc["c1"]
    assert f["frequency"] == 1.0  # 2 occasions, not 5 rows
    assert f["n_occasions"] == 2.0
    assert f["recency"] == 4.0
    assert f["T"] == 9.0
    assert f["days_since_last"] == 5.0
    assert f["total_spend"] == 22.0
    assert f["monetary_value"] == 10.0
    assert f["avg_occasion_value"] == 11.0
    assert f["max_occasion_value"] == 12.0


def test_build_occasions_cutoff_keeps_days_up_to_it():
    log = rows(
        [("a", "2020-01-01", 1.0), ("a", "2020-01-02 23:00", 2.0), ("a", "2020-01-03", 4.0)]
    )
    occasions = build_occasions(log, pd.Timestamp("2020-01-02"))
    assert occasions[AMOUNT].tolist() == [1.0, 2.0]


def test_amounts_do_not_change_counts_and_days():
    """DATA_CASES 3: altering or removing amounts leaves frequency and recency alone."""
    log = rows(
        [
            ("a", day(-200), 10.0),
            ("a", day(-200, "18:00"), 1.0),
            ("a", day(-100), 3.0),
            ("a", day(-10), 7.0),
            ("b", day(-50), 2.0),
            ("b", day(-5), 9.0),
        ]
    )
    counts = [
        "frequency",
        "recency",
        "T",
        "n_occasions",
        "days_since_last",
        "occasions_last_30",
        "occasions_last_90",
        "ipt_mean",
        "ipt_std",
    ]
    base = build_features(log, CUTOFF, CFG)[counts]

    altered = log.copy()
    altered[AMOUNT] = [0.0, -5.0, 1e6, 0.01, 0.0, -2.0]
    pd.testing.assert_frame_equal(build_features(altered, CUTOFF, CFG)[counts], base)

    removed = build_features(log.drop(columns=[AMOUNT]), CUTOFF, CFG)
    pd.testing.assert_frame_equal(removed[counts], base)
    assert (removed[["total_spend", "monetary_value", "spend_last_90"]] == 0.0).all().all()
    assert base.loc["a", "frequency"] == 2.0
    assert base.loc["a", "recency"] == 190.0


def test_monetary_value_is_mean_of_repeat_occasion_sums():
    """DATA_CASES 4: daily sums of repeat occasions, not raw rows, not the first day."""
    log = rows(
        [
            ("m", day(-60), 100.0),
            ("m", day(-40, "10:00"), 10.0),
            ("m", day(-40, "11:00"), 20.0),
            ("m", day(-20), 60.0),
        ]
    )
    f = build_features(log, CUTOFF, CFG).loc["m"]
    assert f["monetary_value"] == 45.0  # (30 + 60) / 2; raw rows would give 30
    assert f["avg_occasion_value"] == pytest.approx(190.0 / 3)
    assert f["frequency"] == 2.0


def test_two_purchases_on_first_day_and_one_later():
    """DATA_CASES 5: frequency 1, recency = days from the first day to the later one."""
    log = rows(
        [("x", day(-30, "08:00"), 5.0), ("x", day(-30, "20:00"), 5.0), ("x", day(-9), 8.0)]
    )
    f = build_features(log, CUTOFF, CFG).loc["x"]
    assert f["frequency"] == 1.0
    assert f["recency"] == 21.0
    assert f["T"] == 30.0
    assert f["monetary_value"] == 8.0
    assert f["ipt_mean"] == 21.0
    assert f["ipt_std"] == 0.0


def test_single_occasion_customer():
    f = build_features(rows([("s", day(-10), 7.5)]), CUTOFF, CFG).loc["s"]
    assert f["frequency"] == 0.0
    assert f["recency"] == 0.0
    assert f["monetary_value"] == 0.0
    assert f["avg_occasion_value"] == 7.5
    assert f["ipt_mean"] == 0.0
    assert f["ipt_std"] == 0.0


# ------------------------------------------------------------------- cutoff and leakage


def test_customers_first_buying_after_cutoff_are_absent():
    """DATA_CASES 11; a purchase late on the cutoff day itself counts."""
    log = rows(
        [
            ("early", day(-10), 1.0),
            ("late", day(1, "00:00"), 1.0),
            ("later", day(40), 1.0),
            ("on_cutoff", day(0, "23:59"), 3.0),
        ]
    )
    f = build_features(log, CUTOFF, CFG)
    assert f.index.tolist() == ["early", "on_cutoff"]
    assert f.loc["on_cutoff", "T"] == 0.0
    assert f.loc["on_cutoff", "spend_last_30"] == 3.0


def test_rows_after_cutoff_do_not_influence_features():
    history = rows(
        [
            ("a", day(-120), 4.0),
            ("a", day(-3), 6.0),
            ("b", day(-45), 2.0),
        ]
    )
    future = rows(
        [
            ("a", day(1), 1000.0),
            ("a", day(0, "00:00"), 0.0),  # on the cutoff day: visible, but zero
            ("b", day(30), 50.0),
            ("c", day(2), 9.0),
        ]
    )
    both = pd.concat([history, future], ignore_index=True)
    with_future = build_features(both, CUTOFF, CFG)
    expected = build_features(pd.concat([history, future.iloc[[1]]]), CUTOFF, CFG)
    pd.testing.assert_frame_equal(with_future, expected, check_exact=True)
    assert with_future.loc["a", "frequency"] == 2.0  # the zero-amount day on the cutoff
    assert with_future.loc["a", "total_spend"] == 10.0


def test_shuffled_input_gives_identical_features():
    """DATA_CASES 15: row order never matters, not even in the last bit."""
    rng = np.random.default_rng(7)
    n = 3000
    offsets = rng.integers(-400, 1, size=n)
    log = pd.DataFrame(
        {
            CUSTOMER_ID: [f"{i:04d}" for i in rng.integers(0, 300, size=n)],
            TIMESTAMP: (CUTOFF + pd.to_timedelta(offsets, unit="D")
                        + pd.to_timedelta(rng.integers(0, 86400, size=n), unit="s")),
            AMOUNT: rng.lognormal(2.0, 1.5, size=n).round(2) * 1.1,  # awkward floats
            SOURCE_ROW: np.arange(n, dtype=np.int64),
        }
    )
    base = build_features(log, CUTOFF, CFG)
    for seed in (1, 2):
        shuffled = log.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        pd.testing.assert_frame_equal(build_features(shuffled, CUTOFF, CFG), base,
                                      check_exact=True)
    assert base.index.is_monotonic_increasing


# ------------------------------------------------------------------------------ windows


def test_window_boundary_excludes_the_day_w_days_before_cutoff():
    log = rows(
        [
            ("w", day(-90), 1.0),  # exactly cutoff - 90: outside (cutoff - 90, cutoff]
            ("w", day(-89), 2.0),
            ("w", day(-30), 4.0),  # exactly cutoff - 30: outside the 30-day window
            ("w", day(-29), 8.0),
            ("w", day(0), 16.0),
        ]
    )
    f = build_features(log, CUTOFF, CFG).loc["w"]
    assert f["spend_last_30"] == 24.0
    assert f["occasions_last_30"] == 2.0
    assert f["spend_last_90"] == 30.0
    assert f["occasions_last_90"] == 4.0


def test_inter_purchase_times_use_population_std():
    log = rows([("g", day(d), 1.0) for d in (-12, -10, -6, 0)])
    f = build_features(log, CUTOFF, CFG).loc["g"]
    assert f["ipt_mean"] == 4.0
    assert f["ipt_std"] == pytest.approx(math.sqrt(8.0 / 3.0))  # gaps 2, 4, 6


def test_spend_trend_compares_recent_with_earlier_rate():
    log = rows(
        [
            ("down", day(-180), 90.0),  # earlier period: days -180..-90, 90 days long
            ("down", day(-10), 45.0),
            ("up", day(-190), 10.0),  # earlier period 100 days: rate 0.1
            ("up", day(-90), 0.0),  # on cutoff - w: earlier, adds no spend
            ("up", day(-1), 90.0),  # recent rate 1.0
            ("young", day(-90), 5.0),  # T == w: no earlier period
            ("younger", day(-20), 5.0),
            ("zero", day(-300), 0.0),
            ("zero", day(-5), 0.0),
        ]
    )
    f = build_features(log, CUTOFF, CFG)
    assert f.loc["down", "recent_spend_rate"] == 0.5
    assert f.loc["down", "earlier_spend_rate"] == 1.0
    assert f.loc["down", "spend_trend"] == pytest.approx(-1.0 / 3.0)
    assert f.loc["up", "earlier_spend_rate"] == pytest.approx(0.1)
    assert f.loc["up", "spend_trend"] == pytest.approx(0.9 / 1.1)
    assert f.loc["young", "spend_trend"] == 0.0
    assert f.loc["young", "earlier_spend_rate"] == 0.0
    assert f.loc["younger", "spend_trend"] == 0.0
    assert f.loc["younger", "recent_spend_rate"] == pytest.approx(5.0 / 90.0)
    assert f.loc["zero", "spend_trend"] == 0.0
    assert f["spend_trend"].between(-1.0, 1.0).all()


# ------------------------------------------------------------------------------ targets


def test_targets_window_excludes_cutoff_and_includes_horizon_end():
    log = rows(
        [
            ("t", day(0, "23:00"), 1.0),  # on the cutoff: history, not target
            ("t", day(1, "00:00"), 2.0),
            ("t", day(1, "12:00"), 3.0),  # same day: one occasion
            ("t", day(91, "23:59"), 4.0),  # cutoff + horizon: included
            ("t", day(92), 8.0),  # after the horizon
            ("u", day(0), 5.0),
            ("v", day(92), 5.0),
        ]
    )
    targets = build_targets(log, CUTOFF, 91)
    assert targets.index.tolist() == ["t"]
    assert targets.loc["t", "target_spend"] == 9.0
    assert targets.loc["t", "target_occasions"] == 2.0
    assert targets.dtypes.tolist() == [np.float64, np.float64]
    with pytest.raises(ValueError, match="horizon_days"):
        build_targets(log, CUTOFF, 0)


# ------------------------------------------------------------------- shape and plumbing


def test_output_shape_dtypes_and_exact_ids():
    log = rows([("007", day(-5), 1.0), ("7", day(-4), 2.0), ("Ünïcode id", day(-3), 3.0)])
    f = build_features(log, CUTOFF, FeaturesConfig(windows=[180, 30, 30]))
    assert f.index.name == CUSTOMER_ID
    assert f.index.tolist() == ["007", "7", "Ünïcode id"]
    assert all(isinstance(i, str) for i in f.index)
    assert list(f.columns) == feature_columns(FeaturesConfig(windows=[30, 180]))
    assert (f.dtypes == np.float64).all()
    assert list(f.columns[:8]) == [
        "frequency", "recency", "T", "monetary_value", "avg_occasion_value",
        "total_spend", "n_occasions", "days_since_last",
    ]
    assert list(f.columns[-6:]) == [
        "ipt_mean", "ipt_std", "max_occasion_value", "recent_spend_rate",
        "earlier_spend_rate", "spend_trend",
    ]


def test_empty_history_gives_empty_frame_with_columns():
    log = rows([("a", day(5), 1.0)])
    f = build_features(log, CUTOFF, CFG)
    assert f.empty
    assert list(f.columns) == feature_columns(CFG)
    assert build_targets(log.iloc[:0], CUTOFF, 30).empty


def test_bad_inputs_raise_clear_errors():
    log = rows([("a", day(-5), 1.0)])
    with pytest.raises(ValueError, match="customer_id"):
        build_features(log.drop(columns=[CUSTOMER_ID]), CUTOFF, CFG)
    aware = log.copy()
    aware[TIMESTAMP] = aware[TIMESTAMP].dt.tz_localize("UTC")
    with pytest.raises(TypeError, match="naive"):
        build_features(aware, CUTOFF, CFG)
    with pytest.raises(ValueError, match="windows"):
        build_features(log, CUTOFF, FeaturesConfig(windows=[0, 30]))
    with pytest.raises(ValueError, match="naive"):
        build_features(log, pd.Timestamp("2020-06-30", tz="UTC"), CFG)


def test_passed_connection_is_used_and_left_clean():
    log = rows([("a", day(-5), 1.0), ("a", day(-1), 2.0)])
    con = duckdb.connect()
    try:
        f = build_features(log, CUTOFF, CFG, con=con)
        t = build_targets(log, CUTOFF - pd.Timedelta(days=3), 10, con=con)
        assert f.loc["a", "frequency"] == 1.0
        assert t.loc["a", "target_spend"] == 2.0
        views = "SELECT count(*) FROM duckdb_views() WHERE NOT internal"
        assert con.execute(views).fetchone()[0] == 0
    finally:
        con.close()


def test_connect_duckdb_applies_memory_limit_and_spill_folder(tmp_path):
    cfg = FeaturesConfig(duckdb_memory_limit="512MB", duckdb_temp_directory=str(tmp_path))
    con = connect_duckdb(cfg)
    try:
        limit, temp = con.execute(
            "SELECT current_setting('memory_limit'), current_setting('temp_directory')"
        ).fetchone()
    finally:
        con.close()
    assert limit.startswith("488") or "512" in limit  # 512 MB reported in MiB
    assert temp == str(tmp_path)


def test_extra_hook_appends_columns():
    log = rows([("a", day(-5), 1.0), ("b", day(-1), 2.0)])

    def extra(features: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
        assert cutoff == CUTOFF
        return pd.DataFrame({"p_alive": features["T"] / 10.0}, index=features.index)

    f = build_features(log, CUTOFF, CFG, extra=extra)
    assert list(f.columns) == feature_columns(CFG) + ["p_alive"]
    assert f["p_alive"].tolist() == [0.5, 0.1]
    with pytest.raises(ValueError, match="repeat"):
        build_features(log, CUTOFF, CFG, extra=lambda f, c: f[["T"]])


# ------------------------------------------------------------------- real CDNOW sample


def _lifetimes_file(name: str):
    try:
        dist = distribution("lifetimes")
    except PackageNotFoundError:  # pragma: no cover - lifetimes is pinned
        pytest.skip("lifetimes is not installed")
    for file in dist.files or []:
        if file.name == name:
            return dist.locate_file(file)
    pytest.skip(f"{name} not found in the lifetimes distribution")


def test_cdnow_sample_matches_published_summary():
    raw = pd.read_csv(
        _lifetimes_file("CDNOW_sample.txt"),
        sep=r"\s+",
        header=None,
        names=["customer_id", "sample_id", "date", "number_of_cds", "dollar_value"],
        dtype={"customer_id": str, "sample_id": str, "date": str},
    )
    log = pd.DataFrame(
        {
            CUSTOMER_ID: raw["customer_id"].astype(str),
            TIMESTAMP: pd.to_datetime(raw["date"], format="%Y%m%d"),
            AMOUNT: raw["dollar_value"].astype(np.float64),
            SOURCE_ROW: np.arange(len(raw), dtype=np.int64),
        }
    )
    f = build_features(log, pd.Timestamp("1997-09-30"), FeaturesConfig())
    assert len(f) == 2357
    assert int((f["frequency"] > 0).sum()) == 946
    assert f.index[0] == "00004"

    # Fader-Hardie summary: x, t_x and T in weeks, zbar = mean repeat spend.
    summary = pd.read_csv(_lifetimes_file("cdnow_customers_summary_with_transactions.csv"))
    ids = raw.drop_duplicates("customer_id").set_index("sample_id")["customer_id"]
    summary.index = ids.loc[summary["ID"].map("{:04d}".format)].to_numpy()
    ours = f.loc[summary.index]
    np.testing.assert_array_equal(ours["frequency"].to_numpy(), summary["x"].to_numpy())
    np.testing.assert_allclose(ours["recency"] / 7, summary["t_x"], atol=0.006)
    np.testing.assert_allclose(ours["T"] / 7, summary["T"], atol=0.006)
    np.testing.assert_allclose(ours["monetary_value"], summary["zbar"], atol=0.006)
