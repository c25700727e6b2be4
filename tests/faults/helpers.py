"""Small inputs and process helpers for the fault tests (issue 6).

Synthetic logs are written here by hand (seeded numpy), the job runs in-process through
``compose_train`` or as a subprocess like ``make train``, and the real ``mlflow models
serve`` is started on a free loopback port.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PYTHON = str(BIN / "python")

#: Overrides that keep one in-process job on a small log at ~20 s on two cores.
FAST = [
    "tuning.n_trials=2",
    "models.catboost.params.iterations=60",
    "models.sklearn.params.max_iter=60",
    "churn.params.iterations=60",
    "features.btyd_features=false",
    "models.catboost.params.baseline_feature=null",
]
#: The brief's overrides for the CDNOW sample (subprocess jobs).
SAMPLE = [
    "data=cdnow_sample",
    "models.catboost.params.iterations=80",
    "models.sklearn.params.max_iter=80",
    "churn.params.iterations=80",
    "tuning.show_progress_bar=false",
]

START = pd.Timestamp("2020-01-01")
END = pd.Timestamp("2021-12-31")


def synthetic_log(n_customers: int = 240, seed: int = 0, *, whales: int = 0,
                  whale_factor: float = 1000.0) -> pd.DataFrame:
    """A clean log: customers join in the first year, buy at their own rate until they
    leave; spend per occasion is gamma around a customer mean. ``whales`` customers
    spend ``whale_factor`` x the median on every occasion (a heavy tail).

    Returns columns customer_id (str, leading zeros), timestamp (datetime), amount.
    """
    rng = np.random.default_rng(seed)
    span = (END - START).days
    rows = []
    for i in range(n_customers):
        cid = f"{i:05d}"
        birth = int(rng.integers(0, 365))
        gap = float(rng.uniform(12, 70))
        life = float(rng.exponential(400))
        mean_spend = float(rng.lognormal(3.2, 0.5))
        day = birth
        while day <= span and day - birth <= life:
            rows.append((cid, START + pd.Timedelta(days=day, hours=int(rng.integers(8, 20))),
                         round(float(rng.gamma(4.0, mean_spend / 4.0)) + 1.0, 2)))
            day += max(1, int(rng.exponential(gap)))
    frame = pd.DataFrame(rows, columns=["customer_id", "timestamp", "amount"])
    if whales:
        median = frame["amount"].median()
        ids = frame["customer_id"].drop_duplicates().sample(whales, random_state=seed)
        hit = frame["customer_id"].isin(set(ids))
        frame.loc[hit, "amount"] = (median * whale_factor
                                    * rng.uniform(0.8, 1.2, hit.sum())).round(2)
    return frame


def train_on_synthetic_log(folder: Path, seed: int, n_customers: int = 300):
    """Run the training job on a synthetic CSV in ``folder``; returns (cfg, csv path)."""
    import mlflow

    from clv_training.jobs.train import run
    from tests.conftest import compose_train

    path = write_csv(synthetic_log(n_customers, seed=seed), folder / "log.csv")
    cfg = compose_train(csv_overrides(path), folder / "mlruns")
    os.environ["MLFLOW_TRACKING_URI"] = cfg.mlflow.tracking_uri
    run(cfg)
    while mlflow.active_run():
        mlflow.end_run()
    return cfg, path


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    out = frame.copy()
    if "timestamp" in out and pd.api.types.is_datetime64_any_dtype(out["timestamp"]):
        out["timestamp"] = out["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S")
    out.to_csv(path, index=False)
    return path


def csv_overrides(path: Path, *extra: str) -> list[str]:
    return ["data=csv", f"data.path={path}", "data.name=faults", *FAST, *extra]


# -- subprocess jobs -----------------------------------------------------------------------------


def job_env(store: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db",
        "MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK": "true",
    }


def start_job(store: Path, overrides: list[str], log: Path) -> subprocess.Popen:
    """``make train`` as a subprocess against ``store`` (its own Hydra output folder)."""
    handle = open(log, "wb")  # noqa: SIM115 - closed by the caller via the process
    return subprocess.Popen(
        [PYTHON, "-m", "clv_training.jobs.train", *overrides, f"paths.mlruns={store}",
         f"hydra.run.dir={log.parent}/hydra-{log.stem}"],
        cwd=ROOT, env=job_env(store), stdout=handle, stderr=subprocess.STDOUT,
    )


def journal_trials(store: Path) -> dict[str, list[str]]:
    """Trial states per study, read from the Optuna journal (empty when none yet)."""
    path = store / "optuna" / "journal.log"
    if not path.exists():
        return {}
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(path)))
    found = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        found[summary.study_name] = [t.state.name for t in study.trials]
    return found


def count_journal_finished(store: Path) -> int:
    """Finished (COMPLETE/PRUNED) trials in the journal, parsed without Optuna so that a
    poll never takes the journal lock while the job writes."""
    path = store / "optuna" / "journal.log"
    if not path.exists():
        return 0
    done = 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            op = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        # op_code 6 = SET_TRIAL_STATE_VALUES; state 1 = COMPLETE, 2 = PRUNED
        if op.get("op_code") == 6 and op.get("state") in (1, 2):
            done += 1
    return done


# -- the real server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes, content_type: str = "application/json", timeout: float = 120):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def start_server(tracking_uri: str, log: Path, model: str = "models:/clv@champion",
                 workers: int | None = None):
    """``mlflow models serve`` on a free 127.0.0.1 port; returns (process, url)."""
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": tracking_uri}
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", model, "--env-manager", "local",
           "--host", "127.0.0.1", "--port", str(port)]
    if workers:
        cmd += ["--workers", str(workers)]
    handle = open(log, "wb")  # noqa: SIM115
    process = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as answer:
                if answer.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("server did not answer /ping within 180 s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
