"""PyMC-Marketing fits: published CDNOW estimates, parameter recovery, heavy tails.

Each PyMC model compiles on first use (several seconds), so the default run keeps to three
fits: CDNOW (BG/NBD + Gamma-Gamma), simulated recovery (BG/NBD + Gamma-Gamma) and one
heavy-tailed Gamma-Gamma fit. The rest are marked slow.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from clv_training.models import btyd, make_model
from clv_training.models.base import ModelFitError
from clv_training.models.btyd import BTYDModel

PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426, "p": 6.25, "q": 3.74, "v": 15.44}
TRUE_BG = {"r": 0.5, "alpha": 6.0, "a": 0.7, "b": 2.5}
TRUE_GG = {"p": 4.0, "q": 3.5, "v": 20.0}


@pytest.fixture(scope="module")
def cdnow_model(cdnow_X):
    return make_model("btyd", {}, horizon_days=91, seed=0).fit(cdnow_X)


def simulated_X(simulate, n: int, seed: int) -> pd.DataFrame:
    """BG/NBD customers with Gamma-Gamma spend, features in days at one cutoff."""
    rng = np.random.default_rng(seed)
    sim = simulate(n, *TRUE_BG.values(), rng.uniform(52, 156, n), 1.0, rng)
    x = sim["frequency"]
    nu = rng.gamma(TRUE_GG["q"], 1.0 / TRUE_GG["v"], n)
    # The mean of x Gamma(p, nu) occasion values is Gamma(p x, rate nu x).
    mean_spend = rng.gamma(TRUE_GG["p"] * np.maximum(x, 1), 1.0 / (nu * np.maximum(x, 1)))
    return pd.DataFrame(
        {
            "customer_id": [f"s{i:05d}" for i in range(n)],
            "frequency": x,
            "recency": sim["recency"] * 7,
            "T": sim["T"] * 7,
            "monetary_value": np.where(x > 0, mean_spend, 0.0),
            "cutoff": pd.Timestamp("2020-06-30"),
        }
    )


def test_cdnow_published_parameters(cdnow_model):
    fitted = cdnow_model.fit_diagnostics()
    for name, value in PUBLISHED.items():
        assert fitted[name] == pytest.approx(value, rel=0.02), name
    assert fitted["n_gamma_gamma_customers"] == 946
    assert fitted["n_customers"] == 2357
    assert fitted["bgnbd_log_likelihood"] == pytest.approx(-9582.4, abs=1.0)
    assert fitted["fit_seconds"] > 0
    assert cdnow_model.fit_diagnostics()["population_mean_spend"] == pytest.approx(
        fitted["p"] * fitted["v"] / (fitted["q"] - 1)
    )


def test_closed_forms_match_pymc_marketing(cdnow_model, cdnow_X):
    """Our numpy predictions agree with PyMC-Marketing's own methods at the same point."""
    import arviz as az
    from pymc_marketing.clv import BetaGeoModel, GammaGammaModel

    rows = cdnow_X[cdnow_X["customer_id"].isin(["00004", "00018", "00021", "00060", "00113"])]
    summary = btyd.btyd_summary(rows)
    bg, gg = cdnow_model.bgnbd_, cdnow_model.gamma_gamma_
    reference = BetaGeoModel()
    reference.build_model(summary[["customer_id", "frequency", "recency", "T"]])
    reference.idata = az.from_dict(
        posterior={k: np.array([[getattr(bg, k)]]) for k in ("r", "alpha", "a", "b")}
    )
    expected = reference.expected_purchases(summary, future_t=13).values.ravel()
    alive = reference.expected_probability_alive(summary).values.ravel()
    spend_ref = GammaGammaModel()
    spend_ref.build_model(summary[summary["frequency"] > 0])
    spend_ref.idata = az.from_dict(
        posterior={k: np.array([[getattr(gg, k)]]) for k in ("p", "q", "v")}
    )
    spend = spend_ref.expected_customer_spend(summary).values.ravel()

    model = BTYDModel.from_parameters(bg, gg, horizon_days=91)
    np.testing.assert_allclose(model.expected_purchases(rows), expected, rtol=1e-8)
    np.testing.assert_allclose(model.p_alive(rows), alive, rtol=1e-8)
    np.testing.assert_allclose(model.expected_spend(rows), spend, rtol=1e-8)
    np.testing.assert_allclose(model.predict(rows), expected * spend, rtol=1e-8)
    repeat = (summary["frequency"] > 0).to_numpy()
    no_purchase = reference.expected_probability_no_purchase(13, summary).values.ravel()
    np.testing.assert_allclose(
        model.prob_no_purchase(rows)[repeat], no_purchase[repeat], rtol=1e-8
    )


def test_cdnow_predictions_pickle_and_are_sane(cdnow_model, cdnow_X):
    pred = cdnow_model.predict(cdnow_X)
    again = pickle.loads(pickle.dumps(cdnow_model)).predict(cdnow_X)
    np.testing.assert_array_equal(pred, again)
    assert np.all(np.isfinite(pred)) and np.all(pred >= 0)
    zero = (cdnow_X["frequency"] == 0).to_numpy()
    assert pred[zero].max() < pred[~zero].max()
    assert cdnow_model.feature_importance() is None


def test_simulated_parameters_are_recovered(bgnbd_simulator):
    X = simulated_X(bgnbd_simulator, 3000, seed=11)
    repeat = np.flatnonzero(X["frequency"].to_numpy() > 0)
    X.loc[repeat[0], "monetary_value"] = 0.0  # a repeat buyer whose repeats sum to $0
    model = BTYDModel(horizon_days=91).fit(X)
    fitted = model.fit_diagnostics()
    for name, value in TRUE_BG.items():
        assert fitted[name] == pytest.approx(value, rel=0.15), name
    # p, q and v trade off along a ridge; the population mean spend is pinned down better.
    for name, value in TRUE_GG.items():
        assert fitted[name] == pytest.approx(value, rel=0.3), name
    true_mean = TRUE_GG["p"] * TRUE_GG["v"] / (TRUE_GG["q"] - 1)
    assert fitted["population_mean_spend"] == pytest.approx(true_mean, rel=0.1)
    assert fitted["bgnbd_retried"] == 0 and fitted["gamma_gamma_retried"] == 0
    assert fitted["n_gamma_gamma_customers"] == len(repeat) - 1
    pred = model.predict(X.iloc[[repeat[0]]])
    assert np.isfinite(pred).all() and pred[0] > 0


def test_heavy_tailed_spend_gives_q_error():
    """Mean spend with an infinite-mean mixing (q < 1) must be reported, not used."""
    rng = np.random.default_rng(5)
    n = 800
    x = rng.integers(1, 6, n).astype(float)
    nu = rng.gamma(0.6, 1.0 / 20.0, n)
    summary = pd.DataFrame(
        {
            "customer_id": [f"h{i}" for i in range(n)],
            "frequency": x,
            "monetary_value": rng.gamma(3.0 * x, 1.0 / (nu * x)),
        }
    )
    with pytest.raises(ModelFitError) as err:
        btyd.fit_gamma_gamma(summary)
    assert "q=" in err.value.diagnostic and "<= 1" in err.value.diagnostic
    assert err.value.values["q"] <= 1


@pytest.mark.slow
def test_fit_ignores_row_order_and_subsample_is_seeded(bgnbd_simulator):
    X = simulated_X(bgnbd_simulator, 2000, seed=3)
    a = BTYDModel(91).fit(X).fit_diagnostics()
    b = BTYDModel(91).fit(X.sample(frac=1.0, random_state=1)).fit_diagnostics()
    for name in (*TRUE_BG, *TRUE_GG):
        assert a[name] == b[name], name
    s1 = BTYDModel(91, seed=4, max_fit_customers=800).fit(X).fit_diagnostics()
    s2 = BTYDModel(91, seed=4, max_fit_customers=800).fit(X).fit_diagnostics()
    assert s1["n_fit_customers"] == 800 and s1["r"] == s2["r"]
    assert s1["r"] != a["r"]


@pytest.mark.slow
def test_degenerate_dropout_fails_or_recovers_with_a_diagnostic():
    """Everyone buys at exactly regular intervals: the flat fit runs off; retry or fail."""
    n = 300
    T = np.linspace(100, 400, n)
    X = pd.DataFrame(
        {
            "frequency": np.floor(T / 30),
            "recency": np.floor(T / 30) * 30,
            "T": T,
            "monetary_value": 20.0 + np.arange(n) % 7,
            "cutoff": pd.Timestamp("2021-01-01"),
        }
    )
    try:
        model = BTYDModel(91).fit(X)
    except ModelFitError as err:
        assert "bgnbd" in err.diagnostic and "attempt 2" in err.diagnostic
    else:
        assert model.fit_diagnostics()["bgnbd_retried"] == 1.0
        assert np.all(np.isfinite(model.predict(X)))
