"""Optuna studies inside the Hydra job.

The search space of each family lives in ``conf/model/<family>.yaml`` under ``search``.
Studies are stored in a journal file under ``mlruns/optuna/`` (safe with several worker
processes), so rerunning the same job resumes the study: only the trials still missing
from the budget are run. Each trial is a nested MLflow run under its family's run.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlflow
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from clv_training import tracking

log = logging.getLogger(__name__)

Objective = Callable[[dict[str, Any], optuna.Trial], float]

_DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def suggest_params(trial: optuna.Trial, search: Mapping[str, Mapping[str, Any]]) -> dict:
    """Draw one set of hyperparameters from a search space written in YAML.

    Each entry is ``{type: int|float|categorical, low, high, log, choices}``.
    """
    params: dict[str, Any] = {}
    for name, spec in search.items():
        kind = spec.get("type")
        if kind == "int":
            params[name] = trial.suggest_int(
                name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False))
            )
        elif kind == "float":
            params[name] = trial.suggest_float(
                name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False))
            )
        elif kind == "categorical":
            params[name] = trial.suggest_categorical(name, list(spec["choices"]))
        else:
            raise ValueError(
                f"search space for {name!r} has type {kind!r}; use int, float or categorical"
            )
    return params


def make_storage(storage: str | None, mlruns: str | Path) -> Any:
    """The Optuna storage: a journal file under ``mlruns/optuna`` unless a URL is given.

    A ``sqlite://`` URL is refused: with several workers on one SQLite study, queued trials
    were evaluated twice and a worker crashed (measured on this stack).
    """
    if storage is None or storage == "journal":
        folder = Path(mlruns) / "optuna"
        folder.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(folder / "journal.log")))
    if storage.startswith("sqlite"):
        raise ValueError(
            "tuning.storage=sqlite is not safe for several workers; leave tuning.storage=null "
            "(journal file under mlruns/optuna) or give a PostgreSQL URL"
        )
    if storage.endswith(".log"):
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(storage))
    return optuna.storages.RDBStorage(storage, heartbeat_interval=60, grace_period=120)


def study_name(prefix: str, family: str, digest: str, seed: int, window: str) -> str:
    """One study per family, data, seed and validation window: the same job resumes it."""
    raw = f"{prefix}-{family}-{digest}-seed{seed}-{window}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", raw)


def tune(
    family: str,
    search: Mapping[str, Mapping[str, Any]],
    objective: Objective,
    *,
    n_trials: int,
    seed: int,
    storage: Any,
    name: str,
    greater_is_better: bool,
    metric: str,
    timeout: int | None = None,
    show_progress_bar: bool = True,
) -> tuple[dict[str, Any], float, optuna.Study]:
    """Run (or resume) the family's study and return the best params and value.

    Parameters
    ----------
    objective : callable
        ``objective(params, trial) -> validation metric``; it may raise
        ``optuna.TrialPruned``.
    n_trials : int
        The total budget of the study: completed and pruned trials from earlier runs
        count against it.
    metric : str
        Name under which each trial logs its value (e.g. ``val_rmse``).
    """
    direction = "maximize" if greater_is_better else "minimize"
    sampler = optuna.samplers.TPESampler(seed=seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=30)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction=direction,
        load_if_exists=True,
    )
    done = [t for t in study.trials if t.state in _DONE]
    remaining = max(n_trials - len(done), 0)
    stale = [t for t in study.trials if t.state == TrialState.RUNNING]
    if done or stale:
        log.info(
            "%s: resuming study %s with %d finished trials (%d left unfinished by an "
            "interrupted run); %d to run",
            family,
            name,
            len(done),
            len(stale),
            remaining,
        )

    def wrapped(trial: optuna.Trial) -> float:
        params = suggest_params(trial, search)
        with tracking.run(f"{family}-trial-{trial.number}", nested=True) as active:
            trial.set_user_attr("mlflow_run_id", active.info.run_id)
            mlflow.log_params(params)
            mlflow.set_tags({"family": family, "optuna_study": name, "trial": trial.number})
            try:
                value = objective(params, trial)
            except optuna.TrialPruned:
                # The nested run ends FINISHED with a tag; the pruning is re-raised below.
                mlflow.set_tag("pruned", "true")
                value = None
            else:
                mlflow.log_metric(metric, value)
        if value is None:
            raise optuna.TrialPruned()
        return value

    if remaining:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(
            wrapped,
            n_trials=remaining,
            timeout=timeout,
            n_jobs=1,
            show_progress_bar=show_progress_bar,
            catch=(),
        )
    completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    if not completed:
        raise RuntimeError(f"{family}: no Optuna trial completed in study {name}")
    best = study.best_trial
    log.info(
        "%s: best %s=%.4f of %d completed trials (%d pruned) %s", family, metric, best.value,
        len(completed), len(pruned), best.params,
    )
    return dict(best.params), float(best.value), study
