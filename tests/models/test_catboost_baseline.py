"""CatBoost boosting from a prior prediction (``baseline_feature``)."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from clv_training.models import make_model

PARAMS = {"loss_function": "Tweedie:variance_power=1.5", "iterations": 60, "depth": 3,
          "thread_count": 1}


def _data(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    frequency = rng.poisson(2.0, n).astype(float)
    T = rng.uniform(50, 400, n)
    prior = 5.0 + 10.0 * frequency            # a decent prior of the mean
    true_mean = prior * np.where(T > 200, 0.5, 1.5)  # the prior misses an age effect
    y = rng.gamma(2.0, true_mean / 2.0) * (rng.random(n) < 0.6) / 0.6
    X = pd.DataFrame({"frequency": frequency, "T": T, "btyd_clv": prior,
                      "cutoff": pd.Timestamp("2020-01-01")})
    return X, y, true_mean


def test_baseline_model_corrects_the_prior_and_pickles():
    X, y, true_mean = _data()
    model = make_model("catboost", {**PARAMS, "baseline_feature": "btyd_clv"}, 91, 0).fit(X, y)
    pred = model.predict(X)
    prior_error = np.mean((X["btyd_clv"] - true_mean) ** 2)
    model_error = np.mean((pred - true_mean) ** 2)
    assert model_error < 0.5 * prior_error
    assert (pred >= 0).all()
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict(X), pred)


def test_missing_priors_fall_back_to_the_training_mean():
    X, y, _ = _data()
    model = make_model("catboost", {**PARAMS, "baseline_feature": "btyd_clv"}, 91, 0).fit(X, y)
    holes = X.assign(btyd_clv=np.nan)
    assert np.isfinite(model.predict(holes)).all()


def test_baseline_needs_the_column_and_a_log_link():
    X, y, _ = _data(200)
    with pytest.raises(ValueError, match="features.btyd_features=true"):
        make_model("catboost", {**PARAMS, "baseline_feature": "nope"}, 91, 0).fit(X, y)
    with pytest.raises(ValueError, match="log-link"):
        params = {**PARAMS, "loss_function": "RMSE", "baseline_feature": "btyd_clv"}
        make_model("catboost", params, 91, 0).fit(X, y)


def test_correction_weight_moves_from_the_prior_to_the_full_correction():
    X, y, _ = _data()
    base = {**PARAMS, "baseline_feature": "btyd_clv"}
    full = make_model("catboost", base, 91, 0).fit(X, y).predict(X)
    none = make_model("catboost", {**base, "correction_weight": 0.0}, 91, 0).fit(X, y)
    np.testing.assert_allclose(none.predict(X), X["btyd_clv"], rtol=1e-9)
    half = make_model("catboost", {**base, "correction_weight": 0.5}, 91, 0).fit(X, y)
    # On the log scale, half the correction lies halfway between prior and full model.
    np.testing.assert_allclose(
        np.log(half.predict(X)), 0.5 * (np.log(full) + np.log(X["btyd_clv"])), rtol=1e-6
    )
    # Without a prior the weight has nothing to shrink towards and is ignored.
    plain = make_model("catboost", PARAMS, 91, 0).fit(X, y).predict(X)
    ignored = make_model("catboost", {**PARAMS, "correction_weight": 0.5}, 91, 0).fit(X, y)
    np.testing.assert_array_equal(ignored.predict(X), plain)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        make_model("catboost", {**base, "correction_weight": 1.5}, 91, 0)
