"""Several worker processes on one Optuna study: the budget holds across them.

Each worker is this file run as a script (``python tests/test_tuning_workers.py SPEC``) on a
cheap objective that sleeps, so that workers interleave. The journal-file test runs by
default; the PostgreSQL test (its own throwaway server, SIGKILL of one worker mid-trial)
and the end-to-end test on the CDNOW sample are slow.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from clv_training import tuning

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SPACE = {"x": {"type": "float", "low": -3.0, "high": 3.0}}


# -- the worker process ---------------------------------------------------------------------


def _worker(spec: dict) -> None:
    """Join the study of ``spec`` and run trials until its budget is met."""
    from clv_training import tracking

    folder = Path(spec["folder"])
    tracking.setup_mlflow(spec["tracking_uri"], str(folder / "artifacts"), "workers")
    storage = tuning.make_storage(spec["storage"], folder, heartbeat_seconds=1,
                                  grace_seconds=2, max_retry=3)
    marks = folder / "marks"

    def objective(params, trial):
        (marks / f"{spec['id']}-{trial.number}").touch()
        time.sleep(spec["sleep"])
        return (params["x"] - 1.0) ** 2

    (marks / f"ready-{spec['id']}").touch()
    while not (marks / "go").exists():
        time.sleep(0.02)
    import mlflow

    with mlflow.start_run(run_name=spec["id"]):
        _, _, study = tuning.tune(
            "toy", SPACE, objective, n_trials=spec["budget"], seed=7, storage=storage,
            name="toy-study", greater_is_better=False, metric="val_loss",
            show_progress_bar=False, role=spec["role"], sampler_seed=spec["sampler_seed"],
            wait_for_workers_seconds=spec["wait"], poll_seconds=0.2,
        )
        finished, _ = tuning.claims(study)
    (folder / f"result-{spec['id']}.json").write_text(json.dumps({"finished": finished}))


def _start(folder: Path, storage: str, worker_id: str, *, budget: int, sleep: float,
           role: str = "train", wait: float = 0.0, seed: int = 0) -> subprocess.Popen:
    """A worker process; the MLflow store is the test's (created by ``mlflow_store``)."""
    spec = {
        "folder": str(folder), "storage": storage, "id": worker_id, "budget": budget,
        "sleep": sleep, "role": role, "wait": wait, "sampler_seed": seed,
        "tracking_uri": f"sqlite:///{folder}/mlruns/mlflow.db",
    }
    log = open(folder / f"{worker_id}.log", "wb")  # noqa: SIM115 - lives with the process
    return subprocess.Popen([PYTHON, __file__, json.dumps(spec)], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _go(folder: Path, workers: list[str], timeout: float = 60) -> None:
    """Release the workers together once each has imported everything and opened its store."""
    deadline = time.monotonic() + timeout
    while not all((folder / "marks" / f"ready-{w}").exists() for w in workers):
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.05)
    (folder / "marks" / "go").touch()


def _log(folder: Path, worker_id: str) -> str:
    return (folder / f"{worker_id}.log").read_text(errors="replace")[-3000:]


def _by_worker(study: optuna.Study) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for trial in study.trials:
        found.setdefault(trial.user_attrs.get("worker_role", "?") + "|"
                         + trial.user_attrs.get("worker", "?"), []).append(trial.number)
    return found


# -- journal file (default run) --------------------------------------------------------------


def test_two_processes_on_one_journal_study_hold_the_budget(tmp_path, mlflow_store):
    (tmp_path / "marks").mkdir()
    journal = str(tmp_path / "optuna" / "journal.log")
    budget = 8
    train = _start(tmp_path, journal, "train", budget=budget, sleep=0.3, wait=30, seed=1)
    worker = _start(tmp_path, journal, "worker", budget=budget, sleep=0.3, role="tune-worker",
                    seed=2)
    _go(tmp_path, ["train", "worker"])
    for name, process in (("train", train), ("worker", worker)):
        assert process.wait(timeout=60) == 0, _log(tmp_path, name)

    study = optuna.load_study(study_name="toy-study", storage=tuning.make_storage(journal, "."))
    trials = study.trials
    assert len(trials) == budget, [(t.number, t.state) for t in trials]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(budget))
    by_role = {}
    for trial in trials:
        by_role.setdefault(trial.user_attrs["worker_role"], set()).add(trial.user_attrs["worker"])
    # both processes contributed, each under its own worker id
    assert set(by_role) == {"train", "tune-worker"}, _by_worker(study)
    assert all(len(ids) == 1 for ids in by_role.values())
    assert by_role["train"] != by_role["tune-worker"]
    # the train role waited for the worker's last trial before it chose the best
    assert json.loads((tmp_path / "result-train.json").read_text())["finished"] == budget
    # every trial is a nested MLflow run under its own worker's parent run
    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parents = {r.info.run_id: r.info.run_name for r in runs if "mlflow.parentRunId" not in
               r.data.tags}
    assert sorted(parents.values()) == ["train", "worker"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == budget
    for trial in trials:
        run = mlflow.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["worker"] == trial.user_attrs["worker"]
        expected = "train" if trial.user_attrs["worker_role"] == "train" else "worker"
        assert parents[run.data.tags["mlflow.parentRunId"]] == expected


# -- liveness of RUNNING trials and the bounded wait (in-process) ------------------------------


def _running_trial(study: optuna.Study, **attrs) -> optuna.trial.FrozenTrial:
    trial = study.ask()
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return study._storage.get_trial(trial._trial_id)


def _dead_pid() -> int:
    process = subprocess.Popen([PYTHON, "-c", "pass"])
    process.wait()
    return process.pid


def test_which_running_trials_count_as_live(tmp_path):
    study = optuna.create_study(storage=tuning.make_storage(None, tmp_path))
    host = socket.gethostname()
    dead = _running_trial(study, worker=f"{host}:1:x", worker_host=host, worker_pid=_dead_pid())
    alive = _running_trial(study, worker=f"{host}:{os.getppid()}:y", worker_host=host,
                           worker_pid=os.getppid())
    mine = _running_trial(study, worker=tuning.WORKER_ID, worker_host=host,
                          worker_pid=os.getpid())
    reused = _running_trial(study, worker=f"{host}:{os.getpid()}:old", worker_host=host,
                            worker_pid=os.getpid())
    remote = _running_trial(study, worker="elsewhere:5:z", worker_host="elsewhere",
                            worker_pid=5)
    fresh = _running_trial(study)
    assert not tuning.is_live(dead, heartbeat=False)
    assert tuning.is_live(alive, heartbeat=False)
    assert tuning.is_live(mine, heartbeat=False)
    assert not tuning.is_live(reused, heartbeat=False)
    assert tuning.is_live(remote, heartbeat=False)
    assert tuning.is_live(fresh, heartbeat=False)
    later = datetime.datetime.now() + datetime.timedelta(seconds=tuning._SETUP_SECONDS + 1)
    assert not tuning.is_live(fresh, heartbeat=False, now=later)
    # with heartbeats Optuna fails a dead worker's trial: every RUNNING trial is live
    assert tuning.is_live(dead, heartbeat=True)
    finished, live = tuning.claims(study)
    assert finished == 0
    assert [t.number for t in live] == [alive.number, mine.number, remote.number, fresh.number]


def _toy(params, trial):
    return (params["x"] - 1.0) ** 2


def _tune(storage, budget, wait=0.0):
    return tuning.tune("toy", SPACE, _toy, n_trials=budget, seed=7, storage=storage,
                       name="toy-study", greater_is_better=False, metric="val_loss",
                       show_progress_bar=False, wait_for_workers_seconds=wait,
                       poll_seconds=0.1)


def test_a_dead_workers_trial_does_not_hold_the_budget(tmp_path, mlflow_store):
    import mlflow

    storage = tuning.make_storage(None, tmp_path)
    study = optuna.create_study(study_name="toy-study", storage=storage)
    host = socket.gethostname()
    _running_trial(study, worker=f"{host}:1:x", worker_host=host, worker_pid=_dead_pid())
    with mlflow.start_run():
        _, _, study = _tune(storage, 3)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 3 and states.count(TrialState.RUNNING) == 1


def test_the_wait_for_other_workers_is_bounded_and_logged(tmp_path, mlflow_store, caplog):
    import mlflow

    storage = tuning.make_storage(None, tmp_path)
    study = optuna.create_study(study_name="toy-study", storage=storage)
    # a trial of a worker on another machine that never reports back
    _running_trial(study, worker="elsewhere:5:z", worker_host="elsewhere", worker_pid=5)
    started = time.monotonic()
    with mlflow.start_run(), caplog.at_level("INFO", logger="clv_training.tuning"):
        _, _, study = _tune(storage, 3, wait=1.0)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 10, elapsed
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 2
    assert "waiting up to 1 s for 1 trials other workers are running" in caplog.text
    assert "gave up after" in caplog.text
    # without a wait it returns at once, leaving the trial to the other worker
    caplog.clear()
    with mlflow.start_run(), caplog.at_level("INFO", logger="clv_training.tuning"):
        _tune(storage, 3, wait=0)
    assert "run in other workers" in caplog.text


def test_a_worker_tunes_every_tuned_family_last_first_or_the_chosen_ones(tmp_path):
    from clv_training.jobs.tune_worker import tuned_families
    from tests.conftest import compose_train

    assert tuned_families(compose_train([], tmp_path)) == ["catboost", "sklearn"]
    chosen = compose_train(["tuning.families=[sklearn]"], tmp_path)
    assert tuned_families(chosen) == ["sklearn"]
    off = compose_train(["models.catboost.enabled=false"], tmp_path)
    assert tuned_families(off) == ["sklearn"]
    with pytest.raises(ValueError, match=r"\['formula'\] not tuned"):
        tuned_families(compose_train(["tuning.families=[formula,sklearn]"], tmp_path))
    with pytest.raises(ValueError, match="leaves the worker nothing to tune"):
        tuned_families(compose_train(["tuning.families=[]"], tmp_path))


def test_a_negative_wait_for_workers_is_refused_before_any_work(tmp_path):
    from clv_training.jobs.train import run
    from tests.conftest import compose_train

    cfg = compose_train(
        ["data=csv", f"data.path={tmp_path / 'absent.csv'}",
         "tuning.wait_for_workers_seconds=-1"], tmp_path / "mlruns",
    )
    with pytest.raises(ValueError, match="wait_for_workers_seconds must be >= 0"):
        run(cfg)


# -- PostgreSQL with heartbeats (slow; its own throwaway server) ------------------------------


def _pg_bin(name: str) -> str | None:
    for folder in ("/usr/local/bin", "/usr/lib/postgresql/15/bin"):
        if (Path(folder) / name).exists():
            return str(Path(folder) / name)
    return shutil.which(name)


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL in a temporary folder, reachable only by its unix socket.

    As root, initdb and postgres refuse to run, so they run as the unprivileged
    ``postgres`` account (setpriv); the folder is given to that account.
    """
    initdb, server = _pg_bin("initdb"), _pg_bin("postgres")
    if initdb is None or server is None:
        pytest.skip("no PostgreSQL server binary (initdb, postgres) on this machine")
    prefix: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="clv-pg-"))
    if os.geteuid() == 0:
        import pwd

        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' account to run the server")
        os.chown(folder, account.pw_uid, account.pw_gid)
        prefix = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
                  "--clear-groups"]
    data = folder / "data"
    subprocess.run([*prefix, initdb, "-D", str(data), "-U", "postgres", "-A", "trust",
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
    with socket.socket() as probe:  # a port number for the socket file's name only
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [*prefix, server, "-D", str(data), "-k", str(folder), "-p", str(port),
         "-c", "listen_addresses=", "-c", "fsync=off"],
        stdout=open(folder / "server.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )
    url = f"postgresql://postgres@/postgres?host={folder}&port={port}"
    import sqlalchemy

    engine = sqlalchemy.create_engine(tuning.rdb_url(url))  # the form users write
    deadline = time.monotonic() + 30
    while True:
        try:
            with engine.connect():
                break
        except sqlalchemy.exc.OperationalError:
            assert process.poll() is None, (folder / "server.log").read_text()
            assert time.monotonic() < deadline, "PostgreSQL did not start in 30 s"
            time.sleep(0.2)
    engine.dispose()
    yield url
    process.send_signal(signal.SIGINT)  # fast shutdown
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_postgres_retries_a_killed_workers_trial_and_holds_the_budget(tmp_path, postgres,
                                                                     mlflow_store):
    (tmp_path / "marks").mkdir()
    budget = 12
    survivor = _start(tmp_path, postgres, "survivor", budget=budget, sleep=0.5, wait=60,
                      seed=1)
    victim = _start(tmp_path, postgres, "victim", budget=budget, sleep=2.0,
                    role="tune-worker", seed=2)
    _go(tmp_path, ["survivor", "victim"])
    # kill the victim in the middle of its second trial
    deadline = time.monotonic() + 60
    while not list((tmp_path / "marks").glob("victim-*"))[1:]:
        assert victim.poll() is None, _log(tmp_path, "victim")
        assert time.monotonic() < deadline, "the victim did not start a second trial"
        time.sleep(0.05)
    time.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert survivor.wait(timeout=120) == 0, _log(tmp_path, "survivor")

    storage = tuning.make_storage(postgres, tmp_path, heartbeat_seconds=1, grace_seconds=2)
    study = optuna.load_study(study_name="toy-study", storage=storage)
    trials = study.trials
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(done) == budget, [(t.number, t.state.name) for t in trials]
    assert len({t.number for t in trials}) == len(trials)
    # the killed trial was failed by its missing heartbeat and run again with its params
    assert len(failed) == 1, [(t.number, t.state.name) for t in trials]
    killed = failed[0]
    assert killed.user_attrs["worker_role"] == "tune-worker"
    retried = [t for t in done if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1
    assert retried[0].params == killed.params
    assert retried[0].user_attrs["worker_role"] == "train"
    assert {t.user_attrs["worker_role"] for t in done} == {"train", "tune-worker"}
    assert len(trials) == budget + 1
    assert json.loads((tmp_path / "result-survivor.json").read_text())["finished"] == budget


# -- end to end: make train and make tune-worker at once on the CDNOW sample (slow) ------------


@pytest.mark.slow
def test_train_and_a_tune_worker_share_the_studies_on_the_cdnow_sample(tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from tests.faults.helpers import SAMPLE, job_env, journal_trials

    budget = 8
    store = tmp_path / "mlruns"
    overrides = [*SAMPLE, f"tuning.n_trials={budget}", f"paths.mlruns={store}"]
    # The worker tunes catboost only and starts first; the train job starts once the
    # worker's first trial is in the journal. So both contribute whatever the machine's
    # load: train runs every sklearn trial and joins the catboost study the worker is on.
    extra = {"tune_worker": ["tuning.families=[catboost]"], "train": []}
    jobs = {}
    for module in ("tune_worker", "train"):
        log = open(tmp_path / f"{module}.log", "wb")  # noqa: SIM115 - lives with the process
        jobs[module] = subprocess.Popen(
            [PYTHON, "-m", f"clv_training.jobs.{module}", *overrides, *extra[module],
             f"hydra.run.dir={tmp_path}/hydra-{module}"],
            cwd=ROOT, env=job_env(store), stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 900
        while module == "tune_worker" and not any(journal_trials(store).values()):
            assert jobs[module].poll() is None, _log(tmp_path, module)
            assert time.monotonic() < deadline, "the worker started no trial in 900 s"
            time.sleep(1)
    for module, process in jobs.items():
        assert process.wait(timeout=1500) == 0, _log(tmp_path, module)

    studies = journal_trials(store)
    assert len(studies) == 2, studies  # sklearn and catboost
    for name, states in studies.items():
        finished = sum(s in ("COMPLETE", "PRUNED") for s in states)
        assert finished == budget, (name, states)
    storage = tuning.make_storage(None, store)
    roles: dict[str, int] = {}
    for name in studies:
        study = optuna.load_study(study_name=name, storage=storage)
        assert len({t.number for t in study.trials}) == len(study.trials)
        for trial in study.trials:
            role = trial.user_attrs["worker_role"]
            roles[role] = roles.get(role, 0) + 1
            roles[f"{name.split('-')[1]}/{role}"] = roles.get(f"{name.split('-')[1]}/{role}",
                                                              0) + 1
    print("trials per study and process:", roles)
    # both processes contributed: train all of sklearn, the worker part of catboost
    assert roles.get("sklearn/train", 0) == budget, roles
    assert roles.get("catboost/tune-worker", 0) >= 1, roles

    uri = f"sqlite:///{store}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    versions = MlflowClient().search_model_versions("name = 'clv'")
    assert len(versions) == 1
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    top = {r.data.tags.get("role", "train"): r for r in runs
           if "mlflow.parentRunId" not in r.data.tags}
    assert set(top) == {"train", "tune-worker"}
    assert versions[0].run_id == top["train"].info.run_id
    assert all(r.info.status == "FINISHED" for r in top.values())
    worker_text = (tmp_path / "tune_worker.log").read_text(errors="replace")
    assert "this worker ran trials" in worker_text


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
