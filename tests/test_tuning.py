"""Optuna studies: search spaces from YAML, resumable journal storage, nested MLflow runs."""

from __future__ import annotations

import mlflow
import optuna
import pytest

from clv_training import tuning

SPACE = {
    "x": {"type": "float", "low": -3.0, "high": 3.0},
    "k": {"type": "int", "low": 1, "high": 5},
    "c": {"type": "categorical", "choices": ["a", "b"]},
}


def objective(params, trial):
    return (params["x"] - 1.0) ** 2 + params["k"] + (params["c"] == "b")


def run_study(storage, n_trials, seed=7):
    return tuning.tune(
        "toy", SPACE, objective, n_trials=n_trials, seed=seed, storage=storage, name="toy-study",
        greater_is_better=False, metric="val_loss", show_progress_bar=False,
    )


def test_suggest_params_follows_the_space():
    study = optuna.create_study()
    params = tuning.suggest_params(study.ask(), SPACE)
    assert -3 <= params["x"] <= 3 and 1 <= params["k"] <= 5 and params["c"] in {"a", "b"}
    with pytest.raises(ValueError, match="use int, float or categorical"):
        tuning.suggest_params(study.ask(), {"y": {"type": "uniform"}})


def test_rerun_resumes_the_study_and_trials_are_nested_runs(mlflow_store, tmp_path):
    storage = tuning.make_storage(None, tmp_path)
    with mlflow.start_run() as parent:
        _, _, study = run_study(storage, 4)
        assert len(study.trials) == 4
        # Same study, same budget: nothing more runs.
        _, _, study = run_study(tuning.make_storage(None, tmp_path), 4)
        assert len(study.trials) == 4
        # A bigger budget runs only the difference.
        best, value, study = run_study(tuning.make_storage(None, tmp_path), 6)
        assert len(study.trials) == 6
    assert value == pytest.approx(objective(best, None))
    children = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="list"
    )
    assert len(children) == 6
    assert all("val_loss" in run.data.metrics for run in children)
    assert (tmp_path / "optuna" / "journal.log").exists()


def test_same_seed_gives_the_same_trials(tmp_path, mlflow_store):
    with mlflow.start_run():
        a = run_study(tuning.make_storage(str(tmp_path / "a.log"), tmp_path), 5)[2]
        b = run_study(tuning.make_storage(str(tmp_path / "b.log"), tmp_path), 5)[2]
    assert [t.params for t in a.trials] == [t.params for t in b.trials]


def test_sqlite_storage_is_refused_saying_why_and_what_to_use(tmp_path):
    with pytest.raises(ValueError, match="not safe for several workers") as refused:
        tuning.make_storage(f"sqlite:///{tmp_path}/o.db", tmp_path)
    message = str(refused.value)
    assert "evaluated trials twice" in message
    assert "tuning.storage=null" in message and "postgresql://" in message


def test_study_name_is_a_safe_string():
    name = tuning.study_name("clv", "catboost", "ab12", 42, "1997-12-30")
    assert name == "clv-catboost-ab12-seed42-1997-12-30"


def test_train_job_refuses_sqlite_storage_before_reading_any_data(tmp_path):
    """A refused storage fails at once, not after minutes of contract and feature work."""
    from clv_training.jobs.train import run
    from tests.conftest import compose_train

    cfg = compose_train(
        ["data=csv", f"data.path={tmp_path / 'absent.csv'}",
         f"tuning.storage=sqlite:///{tmp_path / 'o.db'}"],
        tmp_path / "mlruns",
    )
    with pytest.raises(ValueError, match="SQLite is not safe for several workers"):
        run(cfg)


def test_postgresql_urls_use_the_pinned_driver_and_bad_storage_is_named():
    assert tuning.rdb_url("postgresql://u:p@db:5432/o") == "postgresql+psycopg2://u:p@db:5432/o"
    assert tuning.rdb_url("postgres://u@db/o") == "postgresql+psycopg2://u@db/o"
    assert tuning.rdb_url("postgresql+psycopg2://u@db/o") == "postgresql+psycopg2://u@db/o"
    with pytest.raises(ValueError, match="neither a journal file"):
        tuning.make_storage("/tmp/studies.journal", "/tmp")


def test_a_different_metric_or_search_space_gets_another_study(tmp_path):
    from clv_training.jobs.train import study_setup
    from tests.conftest import compose_train

    def setup(*overrides):
        return study_setup(compose_train(list(overrides), tmp_path / "mlruns"), "sklearn")

    base = setup()
    assert base == setup("engine=spark")  # same features on either engine: same study
    assert base != setup("selection.metric=mae")
    assert base != setup("models.sklearn.search.learning_rate.high=0.5")
    assert base != setup("features.windows=[30,90]")
    assert len(base) == 8


def test_unknown_schemes_and_upper_case_sqlite_get_the_storage_hint(tmp_path):
    with pytest.raises(ValueError, match="no database driver for this URL scheme"):
        tuning.make_storage("bogus://x", tmp_path)
    with pytest.raises(ValueError, match="SQLite is not safe"):
        tuning.make_storage(" SQLITE:///o.db", tmp_path)
