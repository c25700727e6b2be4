"""Shared fixtures: a temporary MLflow store per test, Hydra configs composed in code."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh SQLite tracking store and registry under tmp_path; returns its folder."""
    from clv_training import tracking

    store = tmp_path / "mlruns"
    uri = f"sqlite:///{store}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.setup_mlflow(uri, str(store / "artifacts"), "test")
    yield store
    while mlflow.active_run():
        mlflow.end_run()


def compose_train(overrides: list[str], store: Path):
    """Compose conf/train.yaml as the job would, pointed at a temporary store."""
    from clv_training.config import compose_train as compose

    return compose(overrides, root=ROOT, store=store, experiment="test")
