"""Optuna studies inside the Hydra job, shared by any number of worker processes.

The search space of each family lives in ``conf/model/<family>.yaml`` under ``search``.
Studies are stored in a journal file under ``mlruns/optuna/`` (safe with several worker
processes on one machine) or in PostgreSQL (several machines; heartbeats on), so
rerunning the same job resumes the study and ``make tune-worker`` adds a process to it:
the budget ``n_trials`` counts finished (completed or pruned) trials of the study, not
trials of one process. Each trial is a nested MLflow run under its family's run and
carries its worker's id as Optuna user attributes.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlflow
import optuna
from optuna.storages import JournalStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from clv_training import tracking

log = logging.getLogger(__name__)

Objective = Callable[[dict[str, Any], optuna.Trial], float]

_DONE = (TrialState.COMPLETE, TrialState.PRUNED)
#: A RUNNING trial without a worker id younger than this is a worker that has just asked
#: for it (the id is written a few milliseconds later); an older one was interrupted.
_SETUP_SECONDS = 60.0
#: Seconds between two looks at the study while waiting for other workers' trials.
POLL_SECONDS = 2.0

_HOST = socket.gethostname()
#: This process's worker id: host, pid and a random token (a reused pid is not the same
#: worker).
WORKER_ID = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


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


def make_storage(
    storage: str | None,
    mlruns: str | Path,
    *,
    heartbeat_seconds: int = 60,
    grace_seconds: int = 120,
    max_retry: int | None = 3,
) -> Any:
    """The Optuna storage: a journal file under ``mlruns/optuna`` unless a URL is given.

    Parameters
    ----------
    storage : str or None
        None or ``"journal"``: ``mlruns/optuna/journal.log``; a path ending in ``.log``:
        that journal file; any other URL (``postgresql://...``): an RDB storage with
        heartbeats. ``sqlite://`` is refused.
    mlruns : str or Path
        The project store (the default journal lives in its ``optuna`` folder).
    heartbeat_seconds, grace_seconds : int
        RDB only: a worker records a heartbeat every ``heartbeat_seconds`` while it runs a
        trial; a RUNNING trial without one for ``grace_seconds`` is failed (its worker died)
        and queued again with the same parameters.
    max_retry : int or None
        RDB only: how many times one trial is queued again (None: without limit).

    Raises
    ------
    ValueError
        For a SQLite URL: with several workers on one SQLite study, queued trials were
        evaluated twice and a worker crashed (measured on this stack).
    """
    if storage is None or storage == "journal":
        folder = Path(mlruns) / "optuna"
        folder.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(folder / "journal.log")))
    storage = storage.strip()
    if storage.lower().startswith("sqlite"):
        raise ValueError(
            f"tuning.storage={storage!r} is refused: SQLite is not safe for several "
            "workers (with queued trials, two workers raced, evaluated trials twice and one "
            "crashed). Leave tuning.storage=null for a journal file under mlruns/optuna "
            "(workers on this machine), or give a PostgreSQL URL such as "
            "postgresql://user:password@host:5432/optuna (workers on several machines)"
        )
    if storage.lower().endswith(".log"):
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(storage))
    storage = rdb_url(storage)
    from sqlalchemy.exc import NoSuchModuleError

    with warnings.catch_warnings():
        # heartbeat_interval and the retry callback are marked experimental.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(
                storage,
                heartbeat_interval=int(heartbeat_seconds),
                grace_period=int(grace_seconds),
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=max_retry
                ),
            )
        except NoSuchModuleError as exc:
            raise ValueError(
                f"tuning.storage={storage!r}: no database driver for this URL scheme; use "
                "null (mlruns/optuna/journal.log), a path ending in .log, or "
                "postgresql://user:password@host:5432/optuna"
            ) from exc


def rdb_url(storage: str) -> str:
    """The SQLAlchemy URL for ``storage``, with PostgreSQL on the pinned psycopg2 driver.

    SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3, which is not installed.

    Examples
    --------
    >>> rdb_url("postgresql://u:p@db:5432/optuna")
    'postgresql+psycopg2://u:p@db:5432/optuna'
    """
    for bare in ("postgresql://", "postgres://"):
        if storage.startswith(bare):
            return "postgresql+psycopg2://" + storage[len(bare):]
    if "://" not in storage:
        raise ValueError(
            f"tuning.storage={storage!r} is neither a journal file (*.log) nor a database "
            "URL; use null (mlruns/optuna/journal.log), a path ending in .log, or "
            "postgresql://user:password@host:5432/optuna"
        )
    return storage


def study_name(
    prefix: str, family: str, digest: str, seed: int, window: str, setup: str = ""
) -> str:
    """One study per family, data, seed, validation window and tuning set-up.

    ``setup`` is a short hash of everything else that gives a trial's value its meaning
    (the metric and its direction, the search space, the fixed parameters, the features):
    a process with another set-up works on another study instead of mixing its values in.
    """
    raw = f"{prefix}-{family}-{digest}-seed{seed}-{window}" + (f"-{setup}" if setup else "")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", raw)


def _heartbeat_on(study: optuna.Study) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(study._storage)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def is_live(trial: FrozenTrial, *, heartbeat: bool, now: datetime.datetime | None = None) -> bool:
    """Whether a RUNNING trial is still being evaluated by some worker.

    With heartbeats (RDB) Optuna fails a dead worker's trial after the grace period, so
    every RUNNING trial is live. In a journal a dead worker's trial stays RUNNING: one
    from this machine is live while its worker's process is; one without a worker id is
    live only in its first ``_SETUP_SECONDS``.
    """
    if trial.state != TrialState.RUNNING:
        return False
    if heartbeat:
        return True
    worker = trial.user_attrs.get("worker")
    if worker is None:
        started = trial.datetime_start or datetime.datetime.now()
        age = ((now or datetime.datetime.now()) - started).total_seconds()
        return age < _SETUP_SECONDS
    if worker == WORKER_ID:
        # This process runs one trial at a time: its own RUNNING trial is the current one.
        return True
    host = trial.user_attrs.get("worker_host")
    pid = trial.user_attrs.get("worker_pid")
    if host != _HOST or pid is None:
        # Limitation: a journal trial of another machine (shared file system) counts as
        # live until it ends; a dead one is waited for up to wait_for_workers_seconds.
        return True
    if int(pid) == os.getpid():
        return False  # an earlier process with this pid: it died
    return _pid_alive(int(pid))


def claims(study: optuna.Study) -> tuple[int, list[FrozenTrial]]:
    """Finished trials and the RUNNING trials that are live (see :func:`is_live`).

    Runs Optuna's stale-trial check first when the storage has heartbeats, so a dead
    worker's trial is failed and queued again before it is counted.
    """
    heartbeat = _heartbeat_on(study)
    if heartbeat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    now = datetime.datetime.now()
    finished = sum(t.state in _DONE for t in trials)
    live = [t for t in trials if is_live(t, heartbeat=heartbeat, now=now)]
    return finished, live


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
    role: str = "train",
    sampler_seed: int | None = None,
    wait_for_workers_seconds: float = 0.0,
    poll_seconds: float = POLL_SECONDS,
) -> tuple[dict[str, Any], float, optuna.Study]:
    """Run (or resume, or join) the family's study until its budget is met.

    Parameters
    ----------
    objective : callable
        ``objective(params, trial) -> validation metric``; it may raise
        ``optuna.TrialPruned``.
    n_trials : int
        The total budget of the study, across runs and worker processes: completed and
        pruned trials count against it, and so do trials that live workers are running.
    seed : int
        The study's seed (part of its name upstream); the sampler's seed by default.
    metric : str
        Name under which each trial logs its value (e.g. ``val_rmse``).
    timeout : int or None
        Seconds this process spends on the study's trials (Optuna's ``timeout``).
    role : str
        ``train`` or ``tune-worker``; stored with the worker id on each trial.
    sampler_seed : int or None
        The TPE sampler's seed (None: ``seed``). Extra workers pass their own, so that two
        processes do not propose the same parameters.
    wait_for_workers_seconds : float
        When every trial left is running in another worker, wait up to this long for them
        to finish (0: return at once). A dead journal worker on another machine is
        waited for until then; the wait is logged.
    poll_seconds : float
        Seconds between two looks at the study while waiting.

    Returns
    -------
    tuple
        The best params, the best value and the study.
    """
    direction = "maximize" if greater_is_better else "minimize"
    sampler = optuna.samplers.TPESampler(seed=seed if sampler_seed is None else sampler_seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=30)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction=direction,
        load_if_exists=True,
    )
    identity = {
        "worker": WORKER_ID, "worker_host": _HOST, "worker_pid": os.getpid(),
        "worker_role": role,
    }
    finished, live = claims(study)
    numbers = {t.number for t in live}
    stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
             if t.number not in numbers]
    if finished or live or stale:
        log.info(
            "%s: resuming study %s with %d finished trials, %d running in other workers and "
            "%d left unfinished by an interrupted run; %d to run here at most",
            family, name, finished, len(live), len(stale),
            max(n_trials - finished - len(live), 0),
        )

    def wrapped(trial: optuna.Trial) -> float:
        for key, value in identity.items():
            trial.set_user_attr(key, value)
        params = suggest_params(trial, search)
        with tracking.run(f"{family}-trial-{trial.number}", nested=True) as active:
            trial.set_user_attr("mlflow_run_id", active.info.run_id)
            mlflow.log_params(params)
            mlflow.set_tags({"family": family, "optuna_study": name, "trial": trial.number,
                             "worker": WORKER_ID, "role": role})
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

    def stop_when_claimed(study: optuna.Study, trial: FrozenTrial) -> None:
        # MaxTrialsCallback counts finished trials only; this also counts the trials
        # other workers are running, so the next trial is not started past the budget.
        done, running = claims(study)
        if done + len(running) >= n_trials:
            study.stop()

    callbacks = [MaxTrialsCallback(n_trials, states=_DONE), stop_when_claimed]
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    waiting_since: float | None = None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    while True:
        finished, live = claims(study)
        free = n_trials - finished - len(live)
        if finished >= n_trials:
            break
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            log.info("%s: tuning.timeout_seconds reached with %d of %d trials finished",
                     family, finished, n_trials)
            break
        if free > 0:
            waiting_since = None
            # Limitation: two workers that both see one free trial at the same moment both
            # start it (the check and Optuna's ask are not one transaction): the study can
            # end up to (workers - 1) trials over its budget.
            study.optimize(
                wrapped,
                n_trials=free,
                timeout=left,
                n_jobs=1,
                show_progress_bar=show_progress_bar,
                catch=(),
                callbacks=callbacks,
            )
            continue
        if wait_for_workers_seconds <= 0:
            log.info("%s: the last %d trials of study %s run in other workers",
                     family, len(live), name)
            break
        now = time.monotonic()
        if waiting_since is None:
            waiting_since = now
            log.info(
                "%s: waiting up to %.0f s for %d trials other workers are running (%s)",
                family, wait_for_workers_seconds, len(live),
                ", ".join(f"#{t.number} {t.user_attrs.get('worker', '?')}" for t in live),
            )
        elif now - waiting_since >= wait_for_workers_seconds:
            log.warning(
                "%s: gave up after %.0f s waiting for trials %s (still RUNNING: a worker "
                "that died with the journal storage leaves its trial RUNNING); choosing "
                "from %d finished trials",
                family, now - waiting_since, [t.number for t in live], finished,
            )
            break
        time.sleep(poll_seconds)

    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    if not completed:
        raise RuntimeError(f"{family}: no Optuna trial completed in study {name}")
    best = study.best_trial
    log.info(
        "%s: best %s=%.4f of %d completed trials (%d pruned) %s", family, metric, best.value,
        len(completed), len(pruned), best.params,
    )
    return dict(best.params), float(best.value), study
