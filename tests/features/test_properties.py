"""Property tests for features at a cutoff (Hypothesis)."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clv_training.config import FeaturesConfig
from clv_training.data import AMOUNT, CUSTOMER_ID, SOURCE_ROW, TIMESTAMP
from clv_training.features import build
from clv_training.features.build import feature_columns

CUTOFF = pd.Timestamp("2021-03-31")
CFG = FeaturesConfig(windows=[7, 30], trend_window_days=30)
SETTINGS = settings(max_examples=50, deadline=None)

# One connection for the whole module: a fresh one per call (the default, tested in
# test_build.py) costs most of the time of these tiny queries.
_CON: list[duckdb.DuckDBPyConnection] = []


@pytest.fixture(scope="module", autouse=True)
def _shared_connection():
    _CON.append(duckdb.connect())
    yield
    _CON.pop().close()


def build_features(log: pd.DataFrame, cutoff: pd.Timestamp, cfg: FeaturesConfig):
    """``build.build_features`` on the module's connection."""
    return build.build_features(log, cutoff, cfg, con=_CON[0])

# Ids without surrounding whitespace (stripping is the contract's job), leading zeros kept.
IDS = st.one_of(
    st.sampled_from(["007", "7", "0", "00", "a b", "Ö-42", "x\u00e9", "1e3", "nan_not"]),
    st.text(
        alphabet=st.characters(codec="utf-8", categories=("L", "N", "P")),
        min_size=1,
        max_size=6,
    ),
)
ROW = st.tuples(
    IDS,
    st.integers(min_value=-200, max_value=20),  # day offset from the cutoff
    st.integers(min_value=0, max_value=86_399),  # second of the day
    st.integers(min_value=-500, max_value=100_000),  # cents, a few returns
)


@st.composite
def logs(draw) -> pd.DataFrame:
    """A small prepared transaction log around the cutoff."""
    records = draw(st.lists(ROW, min_size=1, max_size=40))
    ids, offsets, seconds, cents = zip(*records, strict=True)
    timestamps = (
        CUTOFF
        + pd.to_timedelta(np.array(offsets), unit="D")
        + pd.to_timedelta(np.array(seconds), unit="s")
    )
    return pd.DataFrame(
        {
            CUSTOMER_ID: pd.Series(ids, dtype=str),
            TIMESTAMP: pd.DatetimeIndex(timestamps).astype("datetime64[ns]"),
            AMOUNT: np.array(cents, dtype=np.float64) / 100.0,
            SOURCE_ROW: np.arange(len(records), dtype=np.int64),
        }
    )


def _reference(log: pd.DataFrame) -> pd.DataFrame:
    """frequency, recency and T computed the slow, obvious way in pandas."""
    days = log.assign(day=log[TIMESTAMP].dt.normalize())
    days = days[days["day"] <= CUTOFF]
    occ = days.groupby([CUSTOMER_ID, "day"])[AMOUNT].sum().reset_index()
    per = occ.groupby(CUSTOMER_ID)["day"].agg(["min", "max", "count"])
    return pd.DataFrame(
        {
            "frequency": (per["count"] - 1).astype(float),
            "recency": (per["max"] - per["min"]).dt.days.astype(float),
            "T": (CUTOFF - per["min"]).dt.days.astype(float),
        }
    )


@SETTINGS
@given(log=logs())
def test_invariants_hold(log):
    f = build_features(log, CUTOFF, CFG)
    assert list(f.columns) == feature_columns(CFG)
    assert (f["recency"] <= f["T"]).all()
    assert (f["recency"] >= 0).all()
    assert (f["days_since_last"] == f["T"] - f["recency"]).all()
    assert (f["n_occasions"] == f["frequency"] + 1).all()
    assert (f["occasions_last_7"] <= f["occasions_last_30"]).all()
    assert (f["occasions_last_30"] <= f["n_occasions"]).all()
    assert f["spend_trend"].between(-1.0, 1.0).all()
    np.testing.assert_allclose(f["ipt_mean"] * f["frequency"], f["recency"], rtol=1e-12)
    assert np.isfinite(f.to_numpy()).all()


@SETTINGS
@given(log=logs())
def test_counts_match_a_pandas_reference_and_ids_stay_exact(log):
    f = build_features(log, CUTOFF, CFG)
    expected = _reference(log)
    assert f.index.tolist() == sorted(expected.index.tolist())
    assert set(f.index) == set(log.loc[log[TIMESTAMP].dt.normalize() <= CUTOFF, CUSTOMER_ID])
    pd.testing.assert_frame_equal(
        f[["frequency", "recency", "T"]],
        expected.loc[f.index],
        check_names=False,
        check_index_type=False,
    )


@SETTINGS
@given(log=logs(), data=st.data())
def test_frequency_and_recency_ignore_amounts_and_row_order(log, data):
    base = build_features(log, CUTOFF, CFG)[["frequency", "recency", "T", "n_occasions"]]
    other = log.copy()
    other[AMOUNT] = data.draw(
        st.lists(
            st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False),
            min_size=len(log),
            max_size=len(log),
        )
    )
    order = data.draw(st.permutations(range(len(log))))
    other = other.iloc[list(order)].reset_index(drop=True)
    got = build_features(other, CUTOFF, CFG)[["frequency", "recency", "T", "n_occasions"]]
    pd.testing.assert_frame_equal(got, base, check_exact=True)


@SETTINGS
@given(log=logs(), data=st.data())
def test_shuffled_input_gives_identical_features(log, data):
    order = data.draw(st.permutations(range(len(log))))
    shuffled = log.iloc[list(order)].reset_index(drop=True)
    pd.testing.assert_frame_equal(
        build_features(shuffled, CUTOFF, CFG), build_features(log, CUTOFF, CFG),
        check_exact=True,
    )


@SETTINGS
@given(log=logs(), k=st.sampled_from([0.1, 0.5, 2.0, 3.0, 7.25, 100.0]))
def test_scaling_amounts_scales_spend_only(log, k):
    base = build_features(log, CUTOFF, CFG)
    scaled_log = log.assign(**{AMOUNT: log[AMOUNT] * k})
    scaled = build_features(scaled_log, CUTOFF, CFG)
    money = [
        "total_spend", "monetary_value", "avg_occasion_value", "max_occasion_value",
        "spend_last_7", "spend_last_30", "recent_spend_rate", "earlier_spend_rate",
    ]
    np.testing.assert_allclose(scaled[money], base[money] * k, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(scaled["spend_trend"], base["spend_trend"], atol=1e-9)
    unchanged = ["frequency", "recency", "T", "n_occasions", "ipt_mean", "ipt_std"]
    pd.testing.assert_frame_equal(scaled[unchanged], base[unchanged], check_exact=True)
