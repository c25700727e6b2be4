"""HistGradientBoosting and CatBoost regressors on a small synthetic problem."""

from __future__ import annotations

import pickle

import numpy as np
import optuna
import pytest
from optuna_integration import CatBoostPruningCallback

from clv_training.models import CatBoostModel, HGBModel, ModelFitError, make_model


def _rmse(pred, y):
    return float(np.sqrt(np.mean((pred - y) ** 2)))


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("sklearn", {"loss": "poisson", "max_iter": 60, "learning_rate": 0.1}),
        ("catboost", {"iterations": 150, "learning_rate": 0.1, "depth": 4, "thread_count": 2}),
    ],
)
def test_beats_a_constant_and_pickles(examples, name, params):
    X, y = examples(3000, seed=1)
    X_test, y_test = examples(1500, seed=2)
    model = make_model(name, params, horizon_days=91, seed=0).fit(X, y)
    pred = model.predict(X_test)
    assert pred.shape == (len(X_test),) and np.all(np.isfinite(pred)) and np.all(pred >= 0)
    constant = np.full(len(y_test), y.mean())
    assert _rmse(pred, y_test) < 0.9 * _rmse(constant, y_test)
    # Predictions are on the spend scale (not log): their mean tracks the target mean.
    assert pred.mean() == pytest.approx(y_test.mean(), rel=0.15)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict(X_test), pred)
    # Column order and extra columns in X do not change predictions.
    shuffled = X_test[list(reversed(X_test.columns))].assign(target_spend=0.0)
    np.testing.assert_array_equal(model.predict(shuffled), pred)


def test_same_seed_same_fit(examples):
    X, y = examples(800, seed=4)
    params = {"iterations": 40, "thread_count": 2}
    a = CatBoostModel(91, seed=5, params=params).fit(X, y).predict(X)
    b = CatBoostModel(91, seed=5, params=params).fit(X, y).predict(X)
    np.testing.assert_array_equal(a, b)


def test_catboost_importance_and_missing_feature(examples):
    X, y = examples(1000, seed=3)
    model = CatBoostModel(91, params={"iterations": 60, "thread_count": 2}).fit(X, y)
    importance = model.feature_importance()
    assert importance.index.is_unique and len(importance) == 20
    assert (importance >= 0).all() and importance.is_monotonic_decreasing
    assert importance.sum() == pytest.approx(100.0)
    with pytest.raises(ValueError, match="frequency"):
        model.predict(X.drop(columns="frequency"))


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_catboost_eval_set_and_optuna_pruning_callback(examples):
    X, y = examples(1500, seed=6)
    X_val, y_val = examples(500, seed=7)
    model = CatBoostModel(91, params={"iterations": 30, "thread_count": 2})
    assert model.eval_metric_name == "Tweedie:variance_power=1.5"
    study = optuna.create_study(direction="minimize")
    trial = study.ask()
    callback = CatBoostPruningCallback(trial, model.eval_metric_name)
    model.fit(X, y, eval_set=(X_val, y_val), callbacks=[callback])
    callback.check_pruned()
    reported = study.trials[0].intermediate_values
    assert len(reported) == 30
    assert model.fit_diagnostics()["tree_count"] == 30  # not cut back to the best iteration
    assert model.fit_diagnostics()["eval_metric"] == pytest.approx(reported[29])
    rmse = CatBoostModel(91, params={"loss_function": "RMSE", "eval_metric": "MAE"})
    assert rmse.eval_metric_name == "MAE"


def test_catboost_rmse_loss_predicts_raw_values(examples):
    X, y = examples(1000, seed=8)
    model = CatBoostModel(91, params={"loss_function": "RMSE", "iterations": 80}).fit(X, y)
    assert model.predict(X).mean() == pytest.approx(y.mean(), rel=0.1)


def test_min_data_in_leaf_takes_effect():
    model = CatBoostModel(91, params={"min_data_in_leaf": 20})
    assert model.params["grow_policy"] == "Depthwise"


def test_all_zero_targets_are_a_fit_error(examples):
    X, y = examples(100, seed=9)
    with pytest.raises(ModelFitError, match="positive targets"):
        HGBModel(91, params={"loss": "poisson"}).fit(X, np.zeros(len(y)))
    with pytest.raises(ModelFitError, match="positive targets"):
        CatBoostModel(91).fit(X, np.zeros(len(y)))


def test_hgb_has_no_importance_and_validates_length(examples):
    X, y = examples(100, seed=10)
    model = HGBModel(91, params={"max_iter": 10})
    with pytest.raises(ValueError, match="100 rows but y has 99"):
        model.fit(X, y[:-1])
    assert model.fit(X, y).feature_importance() is None
    assert model.fit_diagnostics()["n_iter"] == 10
