"""BG/NBD and Gamma-Gamma closed forms, checks and retry logic, without PyMC fits."""

from __future__ import annotations

import functools
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clv_training.models import btyd
from clv_training.models.base import ModelFitError
from clv_training.models.btyd import BGNBDParams, BTYDModel, GammaGammaParams

CDNOW_BG = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
CDNOW_GG = GammaGammaParams(p=6.25, q=3.74, v=15.44)


def test_log_likelihood_matches_published_cdnow_value(cdnow_X):
    s = btyd.btyd_summary(cdnow_X)
    ll = btyd.bgnbd_log_likelihood(CDNOW_BG, s["frequency"], s["recency"], s["T"]).sum()
    assert len(s) == 2357
    assert ll == pytest.approx(-9582.4, abs=1.0)


def test_summary_is_in_weeks_at_latest_cutoff_and_order_free(cdnow_X):
    older = cdnow_X.assign(cutoff=pd.Timestamp("1997-06-30"), frequency=0.0, recency=0.0)
    stacked = pd.concat([older, cdnow_X], ignore_index=True)
    s = btyd.btyd_summary(stacked)
    shuffled = btyd.btyd_summary(stacked.sample(frac=1.0, random_state=3))
    assert len(s) == len(cdnow_X)
    row = s.set_index("customer_id").loc["00004"]
    assert row["T"] == pytest.approx(272 / 7)
    assert row["frequency"] == 2
    pd.testing.assert_frame_equal(s, shuffled)


def _random_params(rng: np.random.Generator) -> BGNBDParams:
    return BGNBDParams(
        r=float(rng.uniform(0.05, 5)),
        alpha=float(rng.uniform(0.5, 50)),
        a=float(rng.uniform(0.1, 5)),
        b=float(rng.uniform(0.3, 8)),
    )


def test_closed_form_expected_purchases_match_quadrature():
    rng = np.random.default_rng(1)
    for _ in range(40):
        params = _random_params(rng)
        x = rng.integers(0, 30, 50).astype(float)
        T = rng.uniform(1, 100, 50)
        t_x = np.where(x > 0, T * rng.uniform(0, 1, 50), 0.0)
        t = float(rng.uniform(1, 60))
        closed = btyd.bgnbd_expected_purchases(params, x, t_x, T, t)
        alive = btyd.bgnbd_p_alive(params, x, t_x, T)
        quad = alive * btyd._expected_purchases_if_alive_quadrature(params, x, T, t)
        np.testing.assert_allclose(closed, quad, rtol=1e-6, atol=1e-10)


def test_expected_purchases_near_a_equal_one_is_continuous():
    x = np.array([0.0, 2.0, 10.0])
    t_x, T = np.array([0.0, 10.0, 30.0]), np.array([20.0, 20.0, 40.0])
    values = [
        btyd.bgnbd_expected_purchases(BGNBDParams(0.5, 5.0, a, 2.0), x, t_x, T, 13.0)
        for a in (0.999, 1.0, 1.001)
    ]
    assert np.all(np.isfinite(values))
    np.testing.assert_allclose(values[0], values[2], rtol=1e-2)
    np.testing.assert_allclose(values[1], values[0], rtol=1e-2)


def test_probabilities_and_counts_match_simulation(bgnbd_simulator):
    """Simulate customers forward; within bins of the prediction, outcomes must agree."""
    rng = np.random.default_rng(7)
    params = BGNBDParams(r=0.6, alpha=5.0, a=0.8, b=2.5)
    t = 13.0
    sim = bgnbd_simulator(200_000, *vars(params).values(), rng.uniform(5, 60, 200_000), t, rng)
    x, t_x, T = sim["frequency"], sim["recency"], sim["T"]

    p0 = btyd.bgnbd_prob_no_purchase(params, x, t_x, T, t)
    alive = btyd.bgnbd_p_alive(params, x, t_x, T)
    expected = btyd.bgnbd_expected_purchases(params, x, t_x, T, t)
    no_purchase = sim["future"] == 0
    assert 0.2 < no_purchase.mean() < 0.95

    for predicted, outcome, tol in (
        (p0, no_purchase, 0.01),
        (alive, sim["alive_at_T"], 0.01),
        (expected, sim["future"], 0.03),
    ):
        assert predicted.mean() == pytest.approx(outcome.mean(), abs=tol)
        edges = np.quantile(predicted, np.linspace(0, 1, 11))
        bins = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, 9)
        for k in np.unique(bins):
            rows = bins == k
            if rows.sum() < 2000:
                continue
            scale = max(1.0, float(np.mean(outcome[rows])))
            assert np.mean(predicted[rows]) == pytest.approx(
                np.mean(outcome[rows]), abs=tol * 3 * scale
            ), f"bin {k}"
    # The naive "P(alive) * exp(-E[lambda] t)" shortcut is visibly off on the same data.
    naive = 1 - alive + alive * np.exp(-(params.r + x) / (params.alpha + T) * t)
    assert abs(naive.mean() - no_purchase.mean()) > 3 * abs(p0.mean() - no_purchase.mean())


def test_frequency_zero_is_certainly_alive_and_no_purchase_in_zero_time():
    x, t_x, T = np.zeros(3), np.zeros(3), np.array([0.0, 5.0, 50.0])
    np.testing.assert_array_equal(btyd.bgnbd_p_alive(CDNOW_BG, x, t_x, T), 1.0)
    np.testing.assert_allclose(btyd.bgnbd_prob_no_purchase(CDNOW_BG, x, t_x, T, 0.0), 1.0)
    np.testing.assert_allclose(btyd.bgnbd_expected_purchases(CDNOW_BG, x, t_x, T, 0.0), 0.0)


positive = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(
    r=positive,
    alpha=positive,
    a=positive,
    b=positive,
    q=st.floats(min_value=1.01, max_value=100),
    T_days=st.floats(min_value=0, max_value=1e4),
    horizon=st.integers(min_value=1, max_value=1000),
    x=st.integers(min_value=0, max_value=500),
    recency_share=st.floats(min_value=0, max_value=1),
)
def test_predictions_are_finite_and_nonnegative_everywhere(
    r, alpha, a, b, q, T_days, horizon, x, recency_share
):
    model = BTYDModel.from_parameters(
        BGNBDParams(r, alpha, a, b), GammaGammaParams(2.0, q, 30.0), horizon_days=horizon
    )
    X = pd.DataFrame(
        {
            "frequency": [0.0, float(x)],
            "recency": [0.0, T_days * recency_share if x else 0.0],
            "T": [T_days, T_days],
            "monetary_value": [0.0, 25.0 if x else 0.0],
        }
    )
    pred = model.predict(X)
    counts = model.expected_purchases(X)
    bound = (r + X["frequency"]) / (alpha + T_days / 7) * horizon / 7
    assert np.all(np.isfinite(pred)) and np.all(pred >= 0)
    assert np.all(counts >= 0) and np.all(counts <= bound * (1 + 1e-6) + 1e-12)
    p0 = model.prob_no_purchase(X)
    assert np.all((p0 >= 0) & (p0 <= 1))


def test_gamma_gamma_spend_and_zero_value_repeat_buyer():
    summary = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d"],
            "frequency": [0.0, 3.0, 1.0, 2.0],
            "monetary_value": [0.0, 40.0, 0.0, 10.0],
        }
    )
    rows = btyd.gamma_gamma_rows(summary)
    assert list(rows["customer_id"]) == ["b", "d"]
    ll = btyd.gamma_gamma_log_likelihood(CDNOW_GG, rows["frequency"], rows["monetary_value"])
    assert np.all(np.isfinite(ll))
    spend = btyd.gamma_gamma_expected_spend(
        CDNOW_GG, summary["frequency"], summary["monetary_value"]
    )
    p, q, v = 6.25, 3.74, 15.44
    assert spend[0] == pytest.approx(p * v / (q - 1))
    assert spend[1] == pytest.approx(p * (v + 3 * 40) / (3 * p + q - 1))
    assert 0 < spend[2] < spend[0]  # the $0 repeat buyer: finite, shrunk below the mean


def test_q_at_most_one_is_a_fit_error_with_values():
    with pytest.raises(ModelFitError) as err:
        BTYDModel.from_parameters(CDNOW_BG, GammaGammaParams(2.0, 0.9, 10.0), 91)
    assert err.value.family == "btyd"
    assert "q=0.9" in err.value.diagnostic and "p=2" in err.value.diagnostic
    assert err.value.values["q"] == pytest.approx(0.9)


@pytest.fixture
def toy_summary(bgnbd_simulator):
    """Function (n, repeat) -> simulated summary (weeks) with Gamma-Gamma-like spend."""
    return functools.partial(_toy_summary, bgnbd_simulator)


def _toy_summary(simulate_bgnbd, n: int = 40, repeat: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    sim = simulate_bgnbd(n, 0.5, 6.0, 0.8, 2.5, rng.uniform(10, 60, n), 1.0, rng)
    x = sim["frequency"] if repeat else np.zeros(n)
    return pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "frequency": x,
            "recency": np.where(x > 0, sim["recency"], 0.0),
            "T": sim["T"],
            "monetary_value": np.where(x > 0, rng.gamma(4.0, 8.0, n), 0.0),
        }
    )


def test_no_repeat_buyers_fails_before_fitting(monkeypatch, toy_summary):
    monkeypatch.setattr(btyd, "_map_fit", lambda *a, **k: pytest.fail("must not fit"))
    with pytest.raises(ModelFitError, match="0 of 40 customers"):
        btyd.fit_bgnbd(toy_summary(repeat=False))
    with pytest.raises(ModelFitError, match="at least 5 repeat buyers with positive repeat"):
        btyd.fit_gamma_gamma(toy_summary(n=4))


def _optimum(summary: pd.DataFrame) -> dict[str, float]:
    """The BG/NBD maximum on a toy summary by scipy, standing in for a good PyMC fit."""
    from scipy.optimize import minimize

    x, t_x, T = (summary[c].to_numpy() for c in ("frequency", "recency", "T"))

    def loss(log_theta):
        return -btyd.bgnbd_log_likelihood(BGNBDParams(*np.exp(log_theta)), x, t_x, T).sum()

    res = minimize(loss, np.zeros(4), method="Nelder-Mead", options={"xatol": 1e-10,
                   "fatol": 1e-12, "maxiter": 20000})
    res = minimize(loss, res.x, method="BFGS", options={"gtol": 1e-9})
    return dict(zip(("r", "alpha", "a", "b"), np.exp(res.x), strict=True))


def test_runaway_fit_is_retried_with_weak_priors(monkeypatch, toy_summary):
    summary = toy_summary(600)
    good = _optimum(summary)
    calls = []

    def fake_map_fit(kind, data, priors, start):
        calls.append((priors, start))
        if len(calls) == 1:
            return {**good, "a": 3e7}  # ran off
        return good

    monkeypatch.setattr(btyd, "_map_fit", fake_map_fit)
    monkeypatch.setattr(btyd, "_log_prior", lambda theta, priors: 0.0)
    params, retried = btyd.fit_bgnbd(summary)
    assert retried is True
    assert params.a == pytest.approx(good["a"])
    assert calls[0][0]["a"][0] == "HalfFlat" and calls[0][1] is None
    assert calls[1][0]["a"][0] == "HalfNormal" and set(calls[1][1]) == {"r", "alpha", "a", "b"}


def test_fit_that_never_converges_names_both_causes(monkeypatch, toy_summary):
    summary = toy_summary(600)
    good = _optimum(summary)
    answers = iter([{**good, "r": float("nan")}, {**good, "alpha": good["alpha"] * 1.5}])
    monkeypatch.setattr(btyd, "_map_fit", lambda *a, **k: next(answers))
    with pytest.raises(ModelFitError) as err:
        btyd.fit_bgnbd(summary)
    message = err.value.diagnostic
    assert "attempt 1: non-finite parameters (r=nan" in message
    assert "attempt 2: optimiser stopped away from an optimum" in message
    assert "per customer in log(" in message


def test_optimiser_exception_becomes_fit_error(monkeypatch, toy_summary):
    def boom(*a, **k):
        raise FloatingPointError("log-probability is -inf at the start")

    monkeypatch.setattr(btyd, "_map_fit", boom)
    with pytest.raises(ModelFitError, match="FloatingPointError: log-probability"):
        btyd.fit_gamma_gamma(toy_summary(100))


def test_unfitted_and_invalid_inputs_raise(toy_summary):
    with pytest.raises(RuntimeError, match="call fit"):
        BTYDModel(91).predict(toy_summary())
    model = BTYDModel.from_parameters(CDNOW_BG, CDNOW_GG, 91)
    bad = toy_summary().assign(recency=1e4)
    with pytest.raises(ValueError, match="recency > T"):
        model.predict(bad)


def test_pickled_model_predicts_identically_without_pymc(tmp_path, toy_summary):
    model = BTYDModel.from_parameters(CDNOW_BG, CDNOW_GG, 91)
    X = toy_summary()
    X[["recency", "T"]] *= 7
    path = tmp_path / "btyd.pkl"
    path.write_bytes(pickle.dumps((model, X)))
    script = (
        "import pickle, sys\n"
        "for name in ('pymc', 'pymc_marketing', 'pymc_extras', 'pytensor'):\n"
        "    sys.modules[name] = None\n"
        f"model, X = pickle.load(open({str(path)!r}, 'rb'))\n"
        "sys.stdout.write(repr(model.predict(X).tolist()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    np.testing.assert_allclose(eval(out.stdout), model.predict(X), rtol=0, atol=0)  # noqa: S307
    assert len(path.read_bytes()) < 20_000
