"""One more Optuna worker on the train job's studies: ``make tune-worker ARGS='...'``.

It composes the same ``conf/train.yaml`` with the same overrides as ``make train``, so it
prepares the same examples, computes the same data digest and joins the same studies
(one per tuned family). It runs trials until each study's budget (``tuning.n_trials``)
is met, counting every worker's trials, logs them to MLflow under its own parent run
(tag ``role=tune-worker``) and never fits a final model or registers one. Start it
beside ``make train`` (or before it: the train job then finds the budget met and only
fits). Run with ``python -m clv_training.jobs.tune_worker key=value ...``.
"""

from __future__ import annotations

import logging
import signal
import time
import zlib
from typing import Any

import hydra
import mlflow
from omegaconf import DictConfig, OmegaConf

from clv_training import tracking, tuning
from clv_training.jobs.train import (
    CONF_DIR,
    FAMILIES,
    _sigterm_to_interrupt,
    open_storage,
    prepare,
    tune_family,
)

log = logging.getLogger(__name__)

ROLE = "tune-worker"


def tuned_families(cfg: DictConfig) -> list[str]:
    """The enabled families with a search space (narrowed to ``tuning.families`` if set),
    last first.

    The train job tunes the families in order and fits each one before it tunes the
    next; a worker that starts from the last family meets it in the middle, so each of
    them spends less time on a study whose budget the other has already met.

    Raises
    ------
    ValueError
        When ``tuning.families`` names a family that is unknown, disabled or not tuned.
    """
    tuned = [
        f for f in FAMILIES
        if cfg.models[f].enabled and (OmegaConf.to_container(cfg.models[f].search) or {})
    ]
    chosen = cfg.tuning.get("families")
    if chosen is None:
        return tuned[::-1]
    if not list(chosen):
        raise ValueError(
            f"tuning.families=[] leaves the worker nothing to tune; give some of {tuned}, "
            "or null for all of them"
        )
    unknown = [f for f in chosen if f not in tuned]
    if unknown:
        raise ValueError(
            f"tuning.families={list(chosen)}: {unknown} not tuned; the enabled families with "
            f"a search space are {tuned}"
        )
    return [f for f in tuned[::-1] if f in set(chosen)]


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run trials on every tuned family's study until its budget is met.

    Returns
    -------
    dict
        ``run_id`` (the worker's parent run), ``worker`` (its id) and ``studies``:
        per family, the study name, the numbers of the trials this worker ran and the
        study's finished trials when the worker left it.
    """
    started = time.monotonic()
    storage = open_storage(cfg)  # first: a refused tuning.storage fails at once
    tuned_families(cfg)  # and an unknown family
    data = prepare(cfg)
    tracking.setup_mlflow(cfg.mlflow.tracking_uri, cfg.mlflow.artifact_root, cfg.mlflow.experiment)
    families = tuned_families(cfg)
    # Its own sampler seed, so that it does not propose the train job's parameters.
    sampler_seed = (int(cfg.seed) + zlib.crc32(tuning.WORKER_ID.encode())) % 2**31
    tags = {
        "role": ROLE,
        "worker": tuning.WORKER_ID,
        "git_commit": tracking.git_commit(cfg.paths.root),
        "data_digest": data.digest,
        "dataset": str(cfg.data.name),
        "cutoff_validation": str(data.plan.validation.date()),
    }
    studies: dict[str, dict[str, Any]] = {}
    log.info("tune worker %s on %s (budget %d trials per study)", tuning.WORKER_ID,
             families, int(cfg.tuning.n_trials))
    with tracking.run(f"tune-worker-{cfg.data.name}", tags=tags) as parent:
        tracking.log_params(OmegaConf.to_container(cfg, resolve=True))
        for family in families:
            with tracking.run(family, nested=True, tags={"family": family, "role": ROLE}):
                _, name, study = tune_family(
                    family, cfg, data.windows, storage, data.digest,
                    role=ROLE, sampler_seed=sampler_seed, wait_for_workers_seconds=0,
                )
                mine = [t.number for t in study.trials
                        if t.user_attrs.get("worker") == tuning.WORKER_ID]
                finished, _ = tuning.claims(study)
                mlflow.set_tags({"optuna_study": name, "optuna_trials_here": len(mine)})
            studies[family] = {"study": name, "trials": mine, "finished": finished}
            log.info("%s: this worker ran trials %s; study %s has %d finished of %d",
                     family, mine, name, finished, int(cfg.tuning.n_trials))
        mlflow.log_metric("job_seconds", time.monotonic() - started)
    return {"run_id": parent.info.run_id, "worker": tuning.WORKER_ID, "studies": studies}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    run(cfg)


if __name__ == "__main__":
    main()
