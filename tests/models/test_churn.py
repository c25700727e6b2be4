"""The churn classifier: probabilities, calibration on held-out customers, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from clv_training.models import ChurnModel, churn_label

PARAMS = {"iterations": 80, "depth": 4, "learning_rate": 0.1}


def _churn_data(n: int, seed: int, shift: float = 0.0) -> tuple[pd.DataFrame, np.ndarray]:
    """Churn driven by days since the last purchase; ``shift`` moves the base rate."""
    rng = np.random.default_rng(seed)
    days_since_last = rng.uniform(0, 365, n)
    frequency = rng.poisson(3, n).astype(float)
    logit = -2.0 + days_since_last / 90 - 0.3 * frequency + shift
    churned = rng.random(n) < 1 / (1 + np.exp(-logit))
    X = pd.DataFrame(
        {
            "customer_id": [f"k{seed}-{i}" for i in range(n)],
            "frequency": frequency,
            "days_since_last": days_since_last,
            "cutoff": pd.Timestamp("2023-03-31"),
            "target_occasions": np.where(churned, 0, 1 + frequency),
        }
    )
    return X, churn_label(X["target_occasions"])


def _brier(prob, label):
    return float(np.mean((prob - label) ** 2))


def test_churn_label_is_no_occasion_in_horizon():
    np.testing.assert_array_equal(churn_label(np.array([0, 1, 3, 0.0])), [1, 0, 0, 1])


def test_probabilities_are_in_unit_interval_and_informative():
    X, y = _churn_data(2000, seed=0)
    model = ChurnModel(PARAMS, seed=1).fit(X, y)
    prob = model.predict_proba(X)
    assert prob.shape == (2000,) and prob.min() >= 0 and prob.max() <= 1
    assert prob[y == 1].mean() > prob[y == 0].mean() + 0.2
    assert "target_occasions" not in model.feature_names_
    importance = model.feature_importance()
    assert importance.index[0] == "days_since_last"


@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
def test_calibration_on_held_out_customers_reduces_brier(method):
    """Trained where churn is rarer than where it is scored: raw scores are too low."""
    X, y = _churn_data(3000, seed=2)
    X_cal, y_cal = _churn_data(2000, seed=3, shift=1.5)
    X_test, y_test = _churn_data(3000, seed=4, shift=1.5)
    model = ChurnModel(PARAMS, seed=0).fit(X, y)
    raw = model.predict_proba(X_test)
    model.calibrate(X_cal, y_cal, method=method)
    calibrated = model.predict_proba(X_test)
    assert model.calibration_method == method
    assert _brier(calibrated, y_test) < _brier(raw, y_test) - 0.01
    assert abs(calibrated.mean() - y_test.mean()) < 0.03 < abs(raw.mean() - y_test.mean())
    assert calibrated.min() >= 0 and calibrated.max() <= 1
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict_proba(X_test), calibrated)


def test_none_and_one_class_calibration_keep_raw_scores():
    X, y = _churn_data(600, seed=5)
    model = ChurnModel(PARAMS, seed=0).fit(X, y)
    raw = model.predict_proba(X)
    model.calibrate(X, y, method="none")
    np.testing.assert_array_equal(model.predict_proba(X), raw)
    model.calibrate(X.iloc[:5], np.ones(5, dtype=int), method="isotonic")
    assert model.calibration_method == "none"
    np.testing.assert_array_equal(model.predict_proba(X), raw)
    with pytest.raises(ValueError, match="calibration must be one of"):
        model.calibrate(X, y, method="beta")


def test_one_class_training_predicts_its_rate():
    X, _ = _churn_data(50, seed=6)
    model = ChurnModel(PARAMS).fit(X, np.zeros(50, dtype=int))
    np.testing.assert_array_equal(model.predict_proba(X), 0.0)
    assert model.feature_importance() is None


def test_bad_labels_and_fixed_params_are_rejected():
    X, y = _churn_data(20, seed=7)
    with pytest.raises(ValueError, match="0/1"):
        ChurnModel(PARAMS).fit(X, y * 2.5)
    with pytest.raises(ValueError, match="set by the model"):
        ChurnModel({"random_seed": 3})
