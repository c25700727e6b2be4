"""MLflow store set-up, run tags and artifact helpers.

Everything that writes to MLflow from the jobs goes through here, so the store layout
(a SQLite file and an artifact folder under ``mlruns/``, both absolute) is decided once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import RunStatus

from clv_training.data import AMOUNT, CUSTOMER_ID, TIMESTAMP

log = logging.getLogger(__name__)

# MLflow refuses params longer than this; longer values are cut with a marker.
_MAX_PARAM_LENGTH = 6000


def setup_mlflow(tracking_uri: str, artifact_root: str, experiment: str) -> str:
    """Point MLflow at the project store and return the experiment id.

    Parameters
    ----------
    tracking_uri : str
        ``sqlite:////abs/path/mlflow.db``; the folder is created if needed.
    artifact_root : str
        Absolute folder for the experiment's artifacts, or a URI (``mlflow-artifacts:/clv``
        behind a tracking server that serves artifacts, ``s3://...``) used as it is.
    experiment : str
        Experiment name, created on first use with ``artifact_root`` as its location.
    """
    lock_path = None
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        lock_path = db.with_name(db.name + ".init.lock")
    is_uri = ":/" in artifact_root and not Path(artifact_root).is_absolute()
    if not is_uri:
        Path(artifact_root).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with _store_init_lock(lock_path):
        # The first access creates or migrates the SQLite tables; two jobs starting on a
        # fresh store at once raced in alembic and one died with a CommandError.
        found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        try:
            experiment_id = mlflow.create_experiment(
                experiment,
                artifact_location=(
                    artifact_root if is_uri else Path(artifact_root).resolve().as_uri()
                ),
            )
        except mlflow.exceptions.MlflowException:
            # Another job created it between our lookup and our create.
            experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@contextmanager
def _store_init_lock(path: Path | None) -> Iterator[None]:
    """Hold an exclusive file lock (POSIX ``flock``) while the store is first opened."""
    if path is None:
        yield
        return
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def git_commit(root: str | Path) -> str:
    """The checkout's commit hash, with ``-dirty`` when tracked files changed; ``unknown``
    outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def data_digest(transactions: pd.DataFrame) -> str:
    """A short content hash of the rows used (independent of row order)."""
    cols = [CUSTOMER_ID, TIMESTAMP, AMOUNT]
    ordered = transactions[cols].sort_values(cols, kind="mergesort").reset_index(drop=True)
    hashed = pd.util.hash_pandas_object(ordered, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


def frame_digest(frame: pd.DataFrame, by: list[str]) -> str:
    """A short content hash of a frame's values, sorted by the ``by`` columns.

    Two runs whose example rows hash alike trained on identical features (the check that
    ``engine=spark`` and ``engine=duckdb`` agree).
    """
    ordered = frame.sort_values(by, kind="mergesort").reset_index(drop=True)
    hashed = pd.util.hash_pandas_object(ordered, index=False).to_numpy()
    header = "\x1f".join(map(str, ordered.columns)).encode()
    return hashlib.sha256(header + hashed.tobytes()).hexdigest()[:16]


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested mapping into ``a.b.c`` keys with string values (MLflow params)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
            continue
        text = json.dumps(value) if isinstance(value, list | tuple) else str(value)
        if len(text) > _MAX_PARAM_LENGTH:
            text = text[: _MAX_PARAM_LENGTH - 3] + "..."
        flat[name] = text
    return flat


def log_params(params: Mapping[str, Any]) -> None:
    """Log flattened params in batches (MLflow caps one batch at 100)."""
    items = list(flatten(params).items())
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start : start + 100]))


def log_frame(frame: pd.DataFrame, artifact_path: str, *, index: bool = False) -> None:
    """Log a DataFrame as a CSV artifact at ``artifact_path`` (e.g. ``data/set_aside.csv``)."""
    folder, _, name = artifact_path.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        frame.to_csv(path, index=index)
        mlflow.log_artifact(str(path), artifact_path=folder or None)


def log_figure(figure: Any, artifact_path: str) -> None:
    """Log a matplotlib figure as PNG and close it."""
    import matplotlib.pyplot as plt

    mlflow.log_figure(figure, artifact_path)
    plt.close(figure)


@contextmanager
def run(
    name: str, *, nested: bool = False, tags: Mapping[str, str] | None = None
) -> Iterator[Any]:
    """Start an MLflow run that ends FAILED on an error and KILLED on an interrupt.

    MLflow's own context manager marks an interrupted run FAILED at best and an
    ``atexit`` hook can mark it FINISHED; here an interrupt (Ctrl-C, SIGTERM turned into
    KeyboardInterrupt by the job) always leaves the run KILLED, so a resumed job never
    mistakes it for a finished one.
    """
    active = mlflow.start_run(run_name=name, nested=nested, tags=dict(tags or {}))
    try:
        yield active
    except KeyboardInterrupt:
        mlflow.end_run(status=RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        mlflow.end_run(status=RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run(status=RunStatus.to_string(RunStatus.FINISHED))
