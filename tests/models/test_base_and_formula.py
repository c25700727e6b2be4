"""The shared interface: feature matrix, ModelFitError, make_model, and the formula."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from clv_training.models import (
    FAMILIES,
    BTYDModel,
    CatBoostModel,
    FormulaModel,
    HGBModel,
    ModelFitError,
    feature_matrix,
    make_model,
)
from clv_training.models.base import FEATURE_COLUMNS


def test_feature_matrix_keeps_numeric_features_in_a_stable_order(examples):
    X, _ = examples(20, seed=0)
    X = X.assign(
        target_spend=1.0,
        target_occasions=2,
        btyd_p_alive=0.5,
        a_flag=True,
        segment="x",
    )
    matrix = feature_matrix(X)
    assert list(matrix.columns) == [*FEATURE_COLUMNS, "btyd_p_alive"]
    assert (matrix.dtypes == "float64").all()
    shuffled = X[list(reversed(X.columns))]
    pd.testing.assert_frame_equal(feature_matrix(shuffled), matrix)


def test_model_fit_error_carries_family_and_diagnostic_and_pickles():
    err = ModelFitError("btyd", "q=0.8 <= 1", {"q": 0.8})
    again = pickle.loads(pickle.dumps(err))
    assert (again.family, again.diagnostic, again.values) == ("btyd", "q=0.8 <= 1", {"q": 0.8})
    assert str(again) == "btyd: q=0.8 <= 1"
    assert isinstance(again, RuntimeError)


def test_make_model_builds_every_family():
    built = {name: make_model(name, {}, horizon_days=91, seed=3) for name in FAMILIES}
    assert isinstance(built["formula"], FormulaModel)
    assert isinstance(built["btyd"], BTYDModel)
    assert isinstance(built["sklearn"], HGBModel)
    assert isinstance(built["catboost"], CatBoostModel)
    for name, model in built.items():
        assert model.name == name and model.horizon_days == 91 and model.seed == 3
    assert make_model("btyd", {"max_fit_customers": 500}, 91, 0).max_fit_customers == 500
    assert make_model("catboost", {"depth": 4}, 91, 0).params["depth"] == 4


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("lightgbm", {}, "unknown model family"),
        ("formula", {"alpha": 1}, "no parameters"),
        ("btyd", {"penalizer": 0.1}, "unknown parameters"),
        ("sklearn", {"n_estimators": 10}, "unknown parameters"),
        ("catboost", {"random_seed": 1}, "set by the model"),
    ],
)
def test_make_model_rejects_bad_names_and_params(name, params, match):
    with pytest.raises(ValueError, match=match):
        make_model(name, params, 91, 0)


def _rows(avg, frequency, T):
    return pd.DataFrame(
        {"avg_occasion_value": avg, "frequency": frequency, "T": T, "cutoff": pd.Timestamp(0)}
    )


def test_formula_hand_computed_values():
    X = _rows([50.0, 20.0, 80.0, -5.0], [3.0, 0.0, 2.0, 4.0], [300.0, 100.0, 0.0, 40.0])
    model = make_model("formula", {}, horizon_days=91, seed=0).fit(X, np.zeros(4))
    # 50 x 3/300 per day x 91 days; no repeats; T == 0; negative average value.
    np.testing.assert_allclose(model.predict(X), [45.5, 0.0, 0.0, 0.0])
    assert model.fit_diagnostics() == {} and model.feature_importance() is None


def test_formula_scales_with_amounts_and_pickles():
    rng = np.random.default_rng(0)
    X = _rows(rng.gamma(2, 30, 50), rng.integers(0, 9, 50).astype(float), rng.uniform(1, 500, 50))
    model = FormulaModel(horizon_days=30).fit(X)
    base = model.predict(X)
    scaled = model.predict(X.assign(avg_occasion_value=X["avg_occasion_value"] * 7.5))
    np.testing.assert_allclose(scaled, 7.5 * base)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).predict(X), base)


def test_formula_needs_its_columns():
    with pytest.raises(ValueError, match="avg_occasion_value"):
        FormulaModel(91).predict(pd.DataFrame({"frequency": [1.0], "T": [2.0]}))
