"""Faults through the whole training job, in-process on small synthetic logs.

- a dirty CSV with every set-aside fault at once: rows in = rows used + rows set aside,
  and the run artifact ``data/set_aside.csv`` carries the same counts by reason;
- heavy tails (DATA_CASES 8): a handful of wholesale customers keeps every family finite;
  many of them make Gamma-Gamma fit q <= 1, which fails the btyd family with its
  diagnostic while the other families train and the best of them is registered;
  ``fail_fast=true`` stops the job with that error instead;
- the registry: a model is registered only after it was logged and loaded back, and
  every registered version loads and scores.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from clv_training.models.base import ModelFitError
from tests.conftest import compose_train
from tests.faults.helpers import csv_overrides, synthetic_log, write_csv

FAMILIES = {"formula", "btyd", "sklearn", "catboost"}


def _use(store: Path) -> str:
    uri = f"sqlite:///{store}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def _run(store: Path, overrides: list[str]):
    from clv_training.jobs.train import run

    cfg = compose_train(overrides, store)
    _use(store)
    try:
        return run(cfg)
    finally:
        while mlflow.active_run():
            mlflow.end_run()


def _children(parent_id: str) -> dict[str, mlflow.entities.Run]:
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", output_format="list",
    )
    return {r.data.tags["family"]: r for r in runs}


def _versions(name: str = "clv"):
    return MlflowClient().search_model_versions(f"name = '{name}'")


# -- a dirty CSV through the job -----------------------------------------------------------------

INJECTED = {"missing_customer_id": 4, "cancelled": 3, "after_observation_end": 3,
            "exact_duplicate": 4, "nonpositive_net_day": 3}


def dirty_log() -> tuple[pd.DataFrame, dict[str, list[int]]]:
    """A clean synthetic log plus every row-level fault; returns the rows (in file order)
    and, per set-aside reason, the 0-based file rows that must be set aside for it."""
    base = synthetic_log(300, seed=1)
    base["timestamp"] = base["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S")
    base["cancelled"] = "false"
    ids = sorted(base["customer_id"].unique())
    a, b, c = ids[3], ids[7], ids[11]
    extra = [
        # missing ids: empty, blank and a literal "nan" (never a customer named "nan")
        ("", "2021-03-01 10:00:00", 20.0, "false", "missing_customer_id"),
        ("", "2021-03-02 10:00:00", 21.0, "false", "missing_customer_id"),
        ("   ", "2021-03-03 10:00:00", 22.0, "false", "missing_customer_id"),
        ("nan", "2021-03-04 10:00:00", 23.0, "false", "missing_customer_id"),
        # cancelled invoices, in every spelling the flag parser accepts
        (a, "2019-12-10 10:00:00", 30.0, "true", "cancelled"),
        (b, "2019-12-11 10:00:00", 31.0, "TRUE", "cancelled"),
        (c, "2019-12-12 10:00:00", 32.0, "1", "cancelled"),
        # after the configured observation end
        (a, "2022-01-03 09:00:00", 40.0, "false", "after_observation_end"),
        (b, "2022-02-01 09:00:00", 41.0, "false", "after_observation_end"),
        (c, "2022-01-01 00:00:01", 42.0, "false", "after_observation_end"),
        # a return bigger than the day's purchase, and a $0 day: both days set aside
        (c, "2019-11-20 10:00:00", 10.0, "false", "nonpositive_net_day"),
        (c, "2019-11-20 15:00:00", -15.0, "false", "nonpositive_net_day"),
        (b, "2019-11-21 10:00:00", 0.0, "false", "nonpositive_net_day"),
    ]
    rows = base.copy()
    expected: dict[str, list[int]] = {k: [] for k in INJECTED}
    for cid, ts, amount, flag, reason in extra:
        expected[reason].append(len(rows))
        rows.loc[len(rows)] = [cid, ts, amount, flag]
    # exact copies of four earlier rows: the later copies are set aside
    for i in (10, 500, 900, 1300):
        expected["exact_duplicate"].append(len(rows))
        rows.loc[len(rows)] = base.iloc[i].tolist()
    # a basket line and a small return on existing purchase days: used, netted per day
    first = base[base["customer_id"] == a].iloc[0]
    day = first["timestamp"][:10]
    rows.loc[len(rows)] = [a, f"{day} 23:00:00", 5.0, "false"]
    rows.loc[len(rows)] = [a, f"{day} 23:30:00", -1.0, "false"]
    assert {k: len(v) for k, v in expected.items()} == INJECTED
    return rows, expected


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dirty")
    rows, expected = dirty_log()
    path = folder / "dirty.csv"
    rows.to_csv(path, index=False)
    store = folder / "mlruns"
    result = _run(store, csv_overrides(
        path, "data.columns.cancelled=cancelled", "data.duplicates=drop",
        "data.observation_end=2021-12-31",
    ))
    return store, rows, expected, result


def test_dirty_csv_rows_in_equal_rows_used_plus_set_aside_by_reason(dirty):
    store, rows, expected, result = dirty
    counts = result["counts"]
    assert counts["rows_in"] == len(rows)
    for reason, n in INJECTED.items():
        assert counts[f"set_aside_{reason}"] == n, reason
    set_aside = sum(v for k, v in counts.items() if k.startswith("set_aside_"))
    assert set_aside == sum(INJECTED.values())
    assert counts["rows_used"] == len(rows) - set_aside

    _use(store)
    tags = mlflow.get_run(result["run_id"]).data.tags
    assert tags["rows.rows_in"] == str(len(rows))
    assert tags["rows.set_aside_exact_duplicate"] == "4"


def test_set_aside_artifact_lists_each_row_with_its_reason(dirty, tmp_path):
    store, rows, expected, result = dirty
    _use(store)
    path = mlflow.artifacts.download_artifacts(
        run_id=result["run_id"], artifact_path="data/set_aside.csv", dst_path=str(tmp_path)
    )
    saved = pd.read_csv(path, dtype={"customer_id": str}, keep_default_na=False)
    assert "reason" in saved.columns and "source_row" in saved.columns
    assert saved["reason"].value_counts().to_dict() == INJECTED
    for reason, file_rows in expected.items():
        got = sorted(saved.loc[saved["reason"] == reason, "source_row"].astype(int))
        assert got == sorted(file_rows), reason
    counts = mlflow.artifacts.load_dict(
        f"runs:/{result['run_id']}/data/row_counts.json"
    )
    assert counts == result["counts"]


def test_dirty_csv_job_registers_a_champion_that_loads_and_scores(dirty):
    store, rows, expected, result = dirty
    _use(store)
    champion = MlflowClient().get_model_version_by_alias("clv", "champion")
    assert str(champion.version) == result["version"]
    model = mlflow.pyfunc.load_model("models:/clv@champion")
    # the example holds a same-day return (a netted basket line): scored with returns on
    out = model.predict(model.input_example, params={"allow_returns": True})
    assert (out["status"] == "scored").all()
    assert np.isfinite(out["clv"].to_numpy(float)).all()


# -- heavy tails ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def heavy_log(tmp_path_factory):
    folder = tmp_path_factory.mktemp("heavy")
    # 20 of 240 customers spend 1000x the median on every occasion: Gamma-Gamma q <= 1
    return write_csv(synthetic_log(240, seed=0, whales=20), folder / "heavy.csv")


@pytest.fixture(scope="module")
def heavy(heavy_log, tmp_path_factory):
    store = tmp_path_factory.mktemp("heavy-run") / "mlruns"
    return store, _run(store, csv_overrides(heavy_log))


def test_gamma_gamma_q_at_most_one_fails_btyd_with_diagnostic_others_train(heavy):
    store, result = heavy
    _use(store)
    children = _children(result["run_id"])
    assert set(children) == FAMILIES
    btyd = children["btyd"].data.tags
    assert btyd["status"] == "failed"
    assert "Gamma-Gamma q=" in btyd["diagnostic"] and "<= 1" in btyd["diagnostic"]
    assert children["btyd"].info.status == "FAILED"
    for family in FAMILIES - {"btyd"}:
        assert children[family].data.tags["status"] == "ok", family
        assert np.isfinite(result["results"][family].test_pred).all(), family
        assert (result["results"][family].test_pred >= 0).all(), family
    board = result["leaderboard"]
    assert board.loc["btyd", "status"] == "failed"
    assert np.isnan(board.loc["btyd", "val_rmse"])
    ok = board[board["status"] == "ok"]
    assert result["winner"] == ok["val_rmse"].idxmin()
    version = MlflowClient().get_model_version_by_alias("clv", "champion")
    assert version.tags["family"] == result["winner"] != "btyd"
    assert mlflow.get_run(result["run_id"]).info.status == "FINISHED"


def test_fail_fast_stops_the_job_with_the_family_error(heavy_log, tmp_path):
    store = tmp_path / "mlruns"
    with pytest.raises(ModelFitError, match=r"q=.*<= 1"):
        _run(store, csv_overrides(heavy_log, "fail_fast=true"))
    _use(store)
    assert _versions() == []
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    statuses = {r.info.run_name: r.info.status for r in runs}
    assert statuses["btyd"] == "FAILED"
    assert statuses["train-faults"] == "FAILED"
    assert "catboost" not in statuses  # stopped at the first failure


@pytest.mark.slow
def test_a_handful_of_wholesale_customers_keeps_every_family_finite(tmp_path):
    path = write_csv(synthetic_log(240, seed=0, whales=6), tmp_path / "whales.csv")
    store = tmp_path / "mlruns"
    result = _run(store, csv_overrides(path))
    _use(store)
    children = _children(result["run_id"])
    for family in FAMILIES:
        assert children[family].data.tags["status"] == "ok", family
        pred = result["results"][family].test_pred
        assert np.isfinite(pred).all() and (pred >= 0).all(), family
        for name, value in children[family].data.metrics.items():
            assert np.isfinite(value), (family, name)
    # the fit that is used is a valid one: finite positive population mean spend
    metrics = children["btyd"].data.metrics
    assert metrics["fit_q"] > 1
    assert np.isfinite(metrics["fit_population_mean_spend"])
    assert metrics["fit_population_mean_spend"] > 0
    # the whales score finite through the registered pipeline as well
    tx = pd.read_csv(path, dtype={"customer_id": str}, parse_dates=["timestamp"])
    top = tx.groupby("customer_id")["amount"].sum().nlargest(3).index
    model = mlflow.pyfunc.load_model("models:/clv@champion")
    out = model.predict(tx[tx["customer_id"].isin(top)].reset_index(drop=True))
    cols = ["clv", "clv_lower_90", "clv_upper_90", "churn_probability"]
    assert np.isfinite(out[cols].to_numpy(float)).all()
    assert len(out) == 3


# -- the registry ---------------------------------------------------------------------------------


def test_every_registered_version_loads_and_points_at_logged_artifacts(dirty):
    store, rows, expected, result = dirty
    _use(store)
    versions = _versions()
    assert len(versions) == 1
    for mv in versions:
        folder = Path(mlflow.artifacts.download_artifacts(f"models:/clv/{mv.version}"))
        assert (folder / "MLmodel").exists() and (folder / "python_model.pkl").exists()
        model = mlflow.pyfunc.load_model(f"models:/clv/{mv.version}")
        out = model.predict(model.input_example, params={"allow_returns": True})
        assert len(out) > 0
        assert mv.run_id == result["run_id"]


@pytest.mark.slow
def test_a_model_that_does_not_load_is_never_registered(monkeypatch, tmp_path):
    import clv_training.jobs.train as train

    def broken(uri, example):
        raise RuntimeError(f"{uri} could not be loaded (test)")

    monkeypatch.setattr(train, "load_and_check", broken)
    path = write_csv(synthetic_log(300, seed=3), tmp_path / "small.csv")
    store = tmp_path / "mlruns"
    with pytest.raises(RuntimeError, match="could not be loaded"):
        _run(store, csv_overrides(path))
    _use(store)
    assert _versions() == []
    with pytest.raises(mlflow.exceptions.MlflowException):
        MlflowClient().get_model_version_by_alias("clv", "champion")
