"""The job against a shared MLflow tracking server (the README's "Scaling out" set-up).

A real ``mlflow server`` on a free loopback port, with its own SQLite store and an
artifact proxy; the train job and a tune worker log to it over HTTP, and the champion
loads back through the server.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.faults.helpers import BIN, PYTHON, ROOT, SAMPLE, free_port, stop

pytestmark = pytest.mark.slow


@pytest.fixture
def tracking_server(tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115
    cmd = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}",
        "--artifacts-destination", str(tmp_path / "server" / "artifacts"),
    ]
    (tmp_path / "server").mkdir()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop(process)
                raise RuntimeError((tmp_path / "server.log").read_text()[-3000:]) from None
            time.sleep(0.5)
    yield url, tmp_path / "server" / "artifacts"
    stop(process)
    log.close()


def test_train_and_a_tune_worker_share_one_tracking_server(tracking_server, tmp_path):
    url, artifacts = tracking_server
    args = [
        *SAMPLE,
        "tuning.n_trials=4",
        f"paths.mlruns={tmp_path / 'local'}",
        f"mlflow.tracking_uri={url}",
        "mlflow.artifact_root=mlflow-artifacts:/clv",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": url}
    worker = subprocess.Popen(
        [PYTHON, "-m", "clv_training.jobs.tune_worker", *args], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    train = subprocess.run(
        [PYTHON, "-m", "clv_training.jobs.train", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=1200,
    )
    worker_out = worker.communicate(timeout=600)[0].decode(errors="replace")
    assert train.returncode == 0, train.stderr[-3000:]
    assert worker.returncode == 0, worker_out[-3000:]

    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    try:
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        roles = {r.data.tags.get("role") for r in top}
        assert "tune-worker" in roles
        version = MlflowClient().get_model_version_by_alias("clv", "champion")
        assert version.version == "1"
        # Artifacts went through the server's proxy into its own folder, not a local one.
        assert any(artifacts.rglob("MLmodel"))
        assert not (tmp_path / "local" / "artifacts").exists() or not any(
            (tmp_path / "local" / "artifacts").rglob("MLmodel")
        )
        model = mlflow.pyfunc.load_model("models:/clv@champion")
        rows = pd.DataFrame(
            {"customer_id": ["00001", "00001"], "timestamp": pd.to_datetime(["1997-01-01", "1997-02-10"]),
             "amount": [12.0, 20.0]}
        )
        scored = model.predict(rows, params={"as_of": "1997-06-30"})
        assert scored["status"].tolist() == ["scored"]
        assert scored["clv"].iloc[0] > 0
    finally:
        mlflow.set_tracking_uri(None)
