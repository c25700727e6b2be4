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
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from clv_training.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"paths.root={ROOT}",
                f"paths.mlruns={store}",
                f"paths.output_dir={store}/outputs",
                "mlflow.experiment=test",
                "tuning.show_progress_bar=false",
                *overrides,
            ],
            return_hydra_config=True,
        )
        HydraConfig.instance().set_config(cfg)
        # The job itself never sees the hydra node; drop it as Hydra does.
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg
