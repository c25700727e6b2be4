"""Kill ``make train`` while it tunes, run it again: the study resumes, nothing is
registered twice, the interrupted runs are not FINISHED and the champion loads.

Each variant runs the job twice on the CDNOW sample in a subprocess (about 2-3 minutes
on two cores), so the module is marked slow.
"""

from __future__ import annotations

import signal
import time

import mlflow
import pytest
from mlflow import MlflowClient

from tests.faults.helpers import SAMPLE, count_journal_finished, journal_trials, start_job

pytestmark = pytest.mark.slow

BUDGET = 12
OVERRIDES = [*SAMPLE, f"tuning.n_trials={BUDGET}"]


def _top_level_runs():
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return sorted(top, key=lambda r: r.info.start_time), runs


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killed_while_tuning_then_rerun_resumes(tmp_path, signum):
    store = tmp_path / "mlruns"
    first = start_job(store, OVERRIDES, tmp_path / "first.log")
    deadline = time.monotonic() + 300
    while count_journal_finished(store) < 3:
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no Optuna trial finished within 300 s"
        time.sleep(0.2)
    first.send_signal(signum)
    code = first.wait(timeout=120)
    assert code != 0, "the interrupted job must not exit 0"
    log_text = (tmp_path / "first.log").read_text(errors="replace")
    studies = journal_trials(store)
    interrupted = {name: states for name, states in studies.items()}
    finished_before = sum(s in ("COMPLETE", "PRUNED") for st in studies.values() for s in st)
    assert 3 <= finished_before < 2 * BUDGET, studies

    uri = f"sqlite:///{store}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    assert MlflowClient().search_model_versions("name = 'clv'") == []

    second = start_job(store, OVERRIDES, tmp_path / "second.log")
    assert second.wait(timeout=900) == 0, (tmp_path / "second.log").read_text()[-4000:]
    second_log = (tmp_path / "second.log").read_text(errors="replace")
    assert "resuming study" in second_log

    # The study resumed: finished trials == budget per tuned family, not budget + earlier.
    studies = journal_trials(store)
    assert len(studies) == 2, studies  # sklearn and catboost
    for name, states in studies.items():
        finished = sum(s in ("COMPLETE", "PRUNED") for s in states)
        assert finished == BUDGET, (name, states)
        if signum == signal.SIGTERM and name in interrupted:
            # the trial that was running when the signal came is closed, not left RUNNING
            assert "RUNNING" not in states, (name, states)

    top, every = _top_level_runs()
    assert len(top) == 2
    killed, complete = top
    assert complete.info.status == "FINISHED"
    expected = "KILLED" if signum == signal.SIGTERM else "RUNNING"
    assert killed.info.status == expected, (killed.info.status, log_text[-2000:])
    # Every run of the interrupted job that was still open is not FINISHED.
    open_children = [
        r for r in every
        if r.data.tags.get("mlflow.parentRunId") == killed.info.run_id
        and r.info.status != "FINISHED"
    ]
    assert open_children, "the family run that was tuning must not be FINISHED"
    assert {r.info.status for r in open_children} == {expected}

    # Exactly one registered version, and the champion loads and scores.
    versions = MlflowClient().search_model_versions("name = 'clv'")
    assert [str(v.version) for v in versions] == ["1"]
    assert versions[0].run_id == complete.info.run_id
    champion = MlflowClient().get_model_version_by_alias("clv", "champion")
    assert str(champion.version) == "1"
    model = mlflow.pyfunc.load_model("models:/clv@champion")
    out = model.predict(model.input_example)
    assert (out["status"] == "scored").all()
