"""Small inputs for the model tests: the CDNOW sample summary and simulated customers."""

from __future__ import annotations

import functools
import importlib.metadata

import numpy as np
import pandas as pd
import pytest

from clv_training.models.base import FEATURE_COLUMNS

CDNOW_CALIBRATION_END = pd.Timestamp("1997-09-30")


@functools.lru_cache(maxsize=1)
def _cdnow_sample_features() -> pd.DataFrame:
    files = importlib.metadata.distribution("lifetimes").files or []
    path = next(f for f in files if f.name == "CDNOW_sample.txt").locate()
    rows = pd.read_csv(
        path,
        sep=r"\s+",
        header=None,
        names=["customer_id", "sample_id", "date", "number_of_cds", "dollar_value"],
        dtype={"customer_id": str, "sample_id": str, "date": str},
    )
    rows["date"] = pd.to_datetime(rows["date"], format="%Y%m%d")
    rows = rows[rows["date"] <= CDNOW_CALIBRATION_END]
    days = rows.groupby(["customer_id", "date"], as_index=False)["dollar_value"].sum()
    by_customer = days.groupby("customer_id")
    first = by_customer["date"].min()
    last = by_customer["date"].max()
    repeat = days[days["date"] > days["customer_id"].map(first)]
    X = pd.DataFrame(
        {
            "frequency": (by_customer.size() - 1).astype("float64"),
            "recency": (last - first).dt.days.astype("float64"),
            "T": (CDNOW_CALIBRATION_END - first).dt.days.astype("float64"),
        }
    )
    X["monetary_value"] = (
        repeat.groupby("customer_id")["dollar_value"].mean().reindex(X.index).fillna(0.0)
    )
    X = X.reset_index()
    X["cutoff"] = CDNOW_CALIBRATION_END
    return X


@pytest.fixture(scope="session")
def cdnow_X() -> pd.DataFrame:
    """CDNOW 1/10 sample at 1997-09-30: customer_id, frequency, recency, T (days), ...

    Shared by the session: tests must not modify it in place.
    """
    return _cdnow_sample_features().copy()


def simulate_bgnbd(
    n: int,
    r: float,
    alpha: float,
    a: float,
    b: float,
    T: np.ndarray,
    future_t: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Simulate BG/NBD customers first seen at time 0 and observed up to T (+ future_t).

    Purchases come at rate lambda ~ Gamma(r, rate alpha); after each repeat purchase the
    customer drops out with probability p ~ Beta(a, b). Returns frequency, recency and T
    in (0, T], the alive state at T and the purchases in (T, T + future_t].
    """
    lam = rng.gamma(r, 1.0 / alpha, size=n)
    p = rng.beta(a, b, size=n)
    T = np.broadcast_to(np.asarray(T, dtype="float64"), (n,)).copy()
    now = np.zeros(n)
    alive = np.ones(n, dtype=bool)
    x = np.zeros(n)
    t_x = np.zeros(n)
    future = np.zeros(n)
    alive_at_T = np.ones(n, dtype=bool)
    active = np.ones(n, dtype=bool)  # still alive and before T + future_t
    while active.any():
        idx = np.flatnonzero(active)
        now[idx] += rng.exponential(1.0 / lam[idx])
        in_past = now[idx] <= T[idx]
        in_future = (~in_past) & (now[idx] <= T[idx] + future_t)
        beyond = ~(in_past | in_future)
        past_idx, future_idx = idx[in_past], idx[in_future]
        x[past_idx] += 1
        t_x[past_idx] = now[past_idx]
        future[future_idx] += 1
        dies = rng.random(len(idx)) < p[idx]
        dead_now = idx[dies & ~beyond]
        alive[dead_now] = False
        alive_at_T[idx[dies & in_past]] = False
        active[idx[beyond]] = False
        active[dead_now] = False
    return {"frequency": x, "recency": t_x, "T": T, "alive_at_T": alive_at_T, "future": future}


@pytest.fixture
def bgnbd_simulator():
    """The BG/NBD simulator as a function (see :func:`simulate_bgnbd`)."""
    return simulate_bgnbd


FEATURE_NAMES = list(FEATURE_COLUMNS)


def synthetic_examples(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Feature-shaped rows with a spend target that depends on rate, value and recency."""
    rng = np.random.default_rng(seed)
    T = rng.uniform(30, 700, n)
    rate = rng.gamma(1.0, 0.01, n)
    n_occ = 1 + rng.poisson(rate * T)
    recency = np.where(n_occ > 1, T * rng.uniform(0.2, 1.0, n), 0.0)
    value = rng.gamma(3.0, 15.0, n)
    total = value * n_occ
    X = pd.DataFrame(
        {
            "frequency": n_occ - 1.0,
            "recency": recency,
            "T": T,
            "monetary_value": np.where(n_occ > 1, value, 0.0),
            "avg_occasion_value": value,
            "total_spend": total,
            "n_occasions": n_occ.astype(float),
            "days_since_last": T - recency,
        }
    )
    for w in (30, 90, 180):
        share = np.clip(w / T, 0, 1) * np.exp(-(T - recency) / 200)
        X[f"occasions_last_{w}"] = np.round(n_occ * share)
        X[f"spend_last_{w}"] = X[f"occasions_last_{w}"] * value
    X["ipt_mean"] = np.where(n_occ > 1, recency / np.maximum(n_occ - 1, 1), 0.0)
    X["ipt_std"] = X["ipt_mean"] * 0.5
    X["max_occasion_value"] = value * 1.5
    X["recent_spend_rate"] = X["spend_last_90"] / 90
    X["earlier_spend_rate"] = total / T
    s = X["recent_spend_rate"] + X["earlier_spend_rate"]
    X["spend_trend"] = np.where(s > 0, (X["recent_spend_rate"] - X["earlier_spend_rate"]) / s, 0)
    X["cutoff"] = pd.Timestamp("2024-01-01")
    X["customer_id"] = [f"c{i:05d}" for i in range(n)]
    active = np.exp(-(T - recency) / 150)
    mean_spend = 91 * (n_occ - 1 + 0.5) / T * value * active
    y = rng.poisson(mean_spend / value) * value * rng.uniform(0.8, 1.2, n)
    return X, y


@pytest.fixture
def examples():
    """Function (n, seed) -> (X, y) of synthetic customer features and horizon spend."""
    return synthetic_examples
