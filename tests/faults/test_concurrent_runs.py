"""Two ``make train`` runs at once on one store: both finish or one fails clearly, and the
registry ends with ``champion`` on a complete version that loads. Slow (two CDNOW-sample
jobs side by side on two cores)."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from tests.faults.helpers import SAMPLE, start_job

pytestmark = pytest.mark.slow


def test_two_jobs_on_one_store(tmp_path):
    store = tmp_path / "mlruns"
    overrides = [*SAMPLE, "tuning.n_trials=2"]
    jobs = [start_job(store, overrides, tmp_path / f"job{i}.log") for i in (1, 2)]
    codes = [job.wait(timeout=1200) for job in jobs]
    logs = [(tmp_path / f"job{i}.log").read_text(errors="replace") for i in (1, 2)]
    assert 0 in codes, logs
    for code, text in zip(codes, logs, strict=True):
        if code != 0:
            # a clear error: a Python traceback whose last line names the exception
            tail = "\n".join(text.strip().splitlines()[-6:])
            assert "Error" in tail, text[-3000:]
            assert "alembic" not in tail, "the store set-up raced: " + tail

    uri = f"sqlite:///{store}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    versions = client.search_model_versions("name = 'clv'")
    assert len(versions) == codes.count(0), [v.version for v in versions]
    assert len({v.version for v in versions}) == len(versions)
    champion = client.get_model_version_by_alias("clv", "champion")
    assert champion.status == "READY"
    assert mlflow.get_run(champion.run_id).info.status == "FINISHED"
    model = mlflow.pyfunc.load_model("models:/clv@champion")
    out = model.predict(model.input_example)
    assert (out["status"] == "scored").all()
    for version in versions:
        loaded = mlflow.pyfunc.load_model(f"models:/clv/{version.version}")
        assert len(loaded.predict(loaded.input_example)) == len(out)
    top = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
           if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.info.status for r in top) == sorted(
        "FINISHED" if c == 0 else "FAILED" for c in codes
    )
