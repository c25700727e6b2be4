"""The synthetic log generator: shape, seeding, and BG/NBD parameter recovery."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clv_training.bench.generator import (
    GeneratorParams,
    generate_rows,
    generate_transactions,
    write_parquet,
)
from clv_training.config import DataConfig, FeaturesConfig
from clv_training.data.contract import prepare_transactions
from clv_training.features.build import build_features
from clv_training.models.btyd import btyd_summary, fit_bgnbd, fit_gamma_gamma


def test_log_has_the_canonical_columns_baskets_returns_and_wholesale():
    params = GeneratorParams(wholesale_share=0.01)
    tx = generate_transactions(3000, params, seed=7)
    assert list(tx.columns) == ["customer_id", "timestamp", "amount"]
    assert isinstance(tx["customer_id"].iloc[0], str)
    assert tx["timestamp"].dtype == "datetime64[ns]"
    assert tx["timestamp"].is_monotonic_increasing
    # Every customer appears; ids keep their leading zeros.
    assert tx["customer_id"].nunique() == 3000
    assert tx["customer_id"].str.fullmatch(r"C\d{7}").all()
    # Returns: a few percent negative rows.
    share_negative = (tx["amount"] < 0).mean()
    assert 0.005 < share_negative < 0.05
    # Baskets: many customer-days have several rows.
    rows_per_day = tx.groupby([tx["customer_id"], tx["timestamp"].dt.normalize()]).size()
    assert (rows_per_day > 1).mean() > 0.3
    # Heavy tail: the top 1% of customers (about the wholesale ones) hold a large share.
    spend = tx.groupby("customer_id")["amount"].sum().sort_values(ascending=False)
    assert spend.iloc[:30].sum() / spend.sum() > 0.15
    # Inside the configured span.
    start = pd.Timestamp(params.start)
    assert tx["timestamp"].min() >= start
    assert tx["timestamp"].max() < start + pd.Timedelta(weeks=params.weeks)


def test_same_seed_same_log_and_row_target(tmp_path):
    a = generate_transactions(500, seed=3)
    b = generate_transactions(500, seed=3)
    c = generate_transactions(500, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not a["amount"].equals(c["amount"])
    table = generate_rows(20_000, seed=1)
    assert 19_000 <= table.num_rows <= 20_000
    path = write_parquet(table, tmp_path / "log.parquet")
    back = pd.read_parquet(path)
    assert len(back) == table.num_rows
    assert list(back.columns) == ["customer_id", "timestamp", "amount"]


def test_bgnbd_fit_recovers_the_true_parameters():
    """Through the project's own path: contract (positive-net days), features, btyd fit."""
    truth = GeneratorParams()
    tx = generate_transactions(4000, truth, seed=0)
    raw = tx.assign(source_row=np.arange(len(tx), dtype="int64"))
    end = pd.Timestamp(truth.start) + pd.Timedelta(days=int(truth.weeks * 7) - 1)
    prepared = prepare_transactions(raw, DataConfig(name="synthetic"), observation_end=end)
    features = build_features(prepared.transactions, prepared.observation_end,
                              FeaturesConfig())
    summary = btyd_summary(features)
    bgnbd, _ = fit_bgnbd(summary)
    assert bgnbd.r == pytest.approx(truth.r, rel=0.10)
    assert bgnbd.alpha == pytest.approx(truth.alpha, rel=0.10)
    assert bgnbd.a == pytest.approx(truth.a, rel=0.20)
    assert bgnbd.b == pytest.approx(truth.b, rel=0.20)
    # The population purchase rate and mean drop-out are identified more tightly.
    assert bgnbd.r / bgnbd.alpha == pytest.approx(truth.r / truth.alpha, rel=0.05)
    assert bgnbd.a / (bgnbd.a + bgnbd.b) == pytest.approx(
        truth.a / (truth.a + truth.b), rel=0.10
    )
    # Gamma-Gamma: wholesale customers break its truth, so only the mean spend per
    # occasion of ordinary customers is checked (returns net a little out of it).
    gamma_gamma, _ = fit_gamma_gamma(summary)
    true_mean = truth.p * truth.v / (truth.q - 1)
    assert gamma_gamma.population_mean_spend == pytest.approx(true_mean, rel=0.35)
