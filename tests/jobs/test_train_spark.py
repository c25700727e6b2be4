"""`make train ARGS='engine=spark'` end to end in local mode, against the DuckDB run."""

from __future__ import annotations

import os

import mlflow
import pytest
from mlflow import MlflowClient

from tests.conftest import compose_train

pytestmark = pytest.mark.slow

OVERRIDES = [
    "data=cdnow_sample",
    "tuning.n_trials=2",
    "tuning.show_progress_bar=false",
    "models.catboost.params.iterations=60",
    "models.sklearn.params.max_iter=60",
    "churn.params.iterations=60",
]


def _train(store, engine: str):
    from clv_training.jobs.train import run

    cfg = compose_train([*OVERRIDES, f"engine={engine}"], store)
    os.environ["MLFLOW_TRACKING_URI"] = cfg.mlflow.tracking_uri
    try:
        result = run(cfg)
        run_tags = mlflow.get_run(result["run_id"]).data.tags
        versions = MlflowClient().search_model_versions(f"name='{cfg.mlflow.model_name}'")
        return cfg, result, run_tags, versions
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_spark_run_registers_a_model_on_the_duckdb_features(tmp_path):
    pytest.importorskip("pyspark", reason="make test-slow installs requirements-spark.txt")
    cfg, result, spark_tags, versions = _train(tmp_path / "spark" / "mlruns", "spark")
    assert cfg.features.engine == "spark"
    assert spark_tags["features_engine"] == "spark"
    assert len(versions) == 1 and versions[0].run_id == result["run_id"]

    _, duck_result, duck_tags, _ = _train(tmp_path / "duckdb" / "mlruns", "duckdb")
    assert duck_tags["features_engine"] == "duckdb"
    assert spark_tags["data_digest"] == duck_tags["data_digest"]
    assert spark_tags["features_digest"] == duck_tags["features_digest"]
    assert len(spark_tags["features_digest"]) == 16
    # Same features, same seeds: the same winner on the same validation figure.
    assert result["winner"] == duck_result["winner"]
