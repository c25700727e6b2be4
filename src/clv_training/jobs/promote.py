"""Manual promotion behind ``make promote VERSION=N``: same tags as automatic promotion."""

from __future__ import annotations

import logging

import hydra
from mlflow import MlflowClient
from omegaconf import DictConfig

from clv_training import registry, tracking
from clv_training.jobs.train import CONF_DIR

log = logging.getLogger(__name__)


def promote_version(cfg: DictConfig) -> registry.Decision:
    tracking.setup_mlflow(cfg.mlflow.tracking_uri, cfg.mlflow.artifact_root, cfg.mlflow.experiment)
    version = str(cfg.version)
    client = MlflowClient()
    found = client.get_model_version(cfg.mlflow.model_name, version)  # raises if absent
    extra = {
        "git_commit": found.tags.get("git_commit", "unknown"),
        "data_digest": found.tags.get("data_digest", "unknown"),
        "promotion.manual": "true",
    }
    return registry.promote(cfg.mlflow.model_name, version, str(cfg.reason), extra)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="promote")
def main(cfg: DictConfig) -> None:
    promote_version(cfg)


if __name__ == "__main__":
    main()
