"""Promotion rules: first model, better and worse challengers, coverage out of tolerance."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from clv_training import registry

RULE = dict(
    metric="rmse", greater_is_better=False, coverage_tolerance=0.05, promote_on_window_change=True
)
WINDOW = "1998-03-31..1998-06-30|abc"


def tags(rmse: float, coverage: float = 0.9, window: str = WINDOW) -> dict[str, str]:
    return {"test_rmse": str(rmse), "test_coverage_90": str(coverage), "test_window": window}


def test_decide_first_model_is_promoted():
    assert registry.decide(tags(10.0), None, **RULE) == (True, "no champion yet")


def test_decide_better_challenger_wins_and_worse_loses():
    promote, reason = registry.decide(tags(9.0), tags(10.0), **RULE)
    assert promote and "9.0000 vs champion 10.0000" in reason
    promote, reason = registry.decide(tags(11.0), tags(10.0), **RULE)
    assert not promote and reason.startswith("champion stays")


def test_decide_greater_is_better_flips_the_comparison():
    rule = {**RULE, "metric": "gini", "greater_is_better": True}
    better = {"test_gini": "0.7", "test_coverage_90": "0.9", "test_window": WINDOW}
    worse = {"test_gini": "0.6", "test_coverage_90": "0.9", "test_window": WINDOW}
    assert registry.decide(better, worse, **rule)[0]
    assert not registry.decide(worse, better, **rule)[0]


@pytest.mark.parametrize("coverage", [0.80, 0.97])
def test_decide_refuses_coverage_outside_tolerance(coverage):
    promote, reason = registry.decide(tags(1.0, coverage), tags(10.0), **RULE)
    assert not promote and "outside 0.9 +/- 0.05" in reason


def test_decide_other_window_follows_config():
    other = tags(10.0, window="1997-12-30..1998-03-31|abc")
    assert registry.decide(tags(11.0), other, **RULE)[0]
    rule = {**RULE, "promote_on_window_change": False}
    assert not registry.decide(tags(11.0), other, **rule)[0]


class _Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def _log_model() -> str:
    with mlflow.start_run():
        return mlflow.pyfunc.log_model(name="model", python_model=_Constant()).model_uri


def test_register_and_consider_on_a_real_registry(mlflow_store):
    client = MlflowClient()
    first = registry.register(_log_model(), "clv", tags(10.0))
    decision = registry.consider("clv", first, **RULE)
    assert decision.promoted and decision.previous_champion is None
    assert str(client.get_model_version_by_alias("clv", "champion").version) == first

    worse = registry.register(_log_model(), "clv", tags(12.0))
    decision = registry.consider("clv", worse, **RULE)
    assert not decision.promoted
    assert str(client.get_model_version_by_alias("clv", "champion").version) == first
    assert str(client.get_model_version_by_alias("clv", "challenger").version) == worse
    assert "champion stays" in client.get_model_version("clv", worse).tags["promotion.decision"]

    off = registry.register(_log_model(), "clv", tags(5.0, coverage=0.7))
    assert not registry.consider("clv", off, **RULE).promoted

    better = registry.register(_log_model(), "clv", tags(8.0))
    decision = registry.consider("clv", better, **RULE)
    assert decision.promoted and decision.previous_champion == first
    record = client.get_model_version("clv", better).tags
    assert record["promotion.previous_champion"] == first
    assert record["promotion.challenger_test_rmse"] == "8.0"
    assert record["promotion.champion_test_rmse"] == "10.0"
    assert "promotion.promoted_at" in record
    assert client.get_model_version("clv", first).tags["promotion.replaced_by"].startswith(better)


def test_manual_promotion_writes_the_same_record(mlflow_store):
    client = MlflowClient()
    a = registry.register(_log_model(), "clv", tags(10.0))
    b = registry.register(_log_model(), "clv", tags(20.0))
    registry.consider("clv", a, **RULE)
    registry.promote("clv", b, "manual promotion", {"promotion.manual": "true"})
    assert str(client.get_model_version_by_alias("clv", "champion").version) == b
    record = client.get_model_version("clv", b).tags
    assert record["promotion.previous_champion"] == a
    assert record["promotion.reason"] == "manual promotion"
