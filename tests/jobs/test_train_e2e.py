"""End to end on the real CDNOW 1/10 sample: `make train`'s job against a temporary store,
then the registered champion behind the real `mlflow models serve`."""

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

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from clv_training.pipeline import OUTPUT_COLUMNS
from tests.conftest import compose_train

FAMILIES = {"formula", "btyd", "sklearn", "catboost"}
METRICS = [
    "rmse", "mae", "spearman", "gini", "decile_mape", "top_decile_capture", "total_error",
]
OVERRIDES = [
    "data=cdnow_sample",
    "tuning.n_trials=2",
    "models.catboost.params.iterations=120",
    "models.sklearn.params.max_iter=100",
    "churn.params.iterations=100",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from clv_training.jobs.train import run

    store = tmp_path_factory.mktemp("e2e") / "mlruns"
    cfg = compose_train(OVERRIDES, store)
    os.environ["MLFLOW_TRACKING_URI"] = cfg.mlflow.tracking_uri
    result = run(cfg)
    yield store, cfg, result
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def _children(parent_id: str):
    return mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", output_format="list"
    )


def test_run_tree_metrics_and_tags(trained):
    store, cfg, result = trained
    parent = mlflow.get_run(result["run_id"])
    assert parent.info.status == "FINISHED"
    for tag in ("git_commit", "data_digest", "cutoff_test", "cutoff_validation", "cutoffs_train"):
        assert parent.data.tags[tag]
    assert parent.data.tags["dataset"] == "cdnow_sample"
    assert parent.data.tags["cutoff_test"] == "1998-03-31"
    counts = result["counts"]
    assert counts["rows_in"] == 6919
    set_aside = sum(v for k, v in counts.items() if k.startswith("set_aside_"))
    assert counts["rows_in"] == counts["rows_used"] + set_aside
    assert parent.data.params["horizon_days"] == "91"

    children = {run.data.tags["family"]: run for run in _children(result["run_id"])}
    assert set(children) == FAMILIES
    for family, child in children.items():
        assert child.data.tags["status"] == "ok", (family, child.data.tags.get("diagnostic"))
        for name in METRICS:
            assert np.isfinite(child.data.metrics[f"test_{name}"]), (family, name)
            assert f"val_{name}" in child.data.metrics
        for name in ("coverage_80", "coverage_90", "width_80", "width_90", "winkler_90",
                     "churn_auc", "churn_brier"):
            assert f"test_{name}" in child.data.metrics, (family, name)
    for family in ("sklearn", "catboost"):
        trials = _children(children[family].info.run_id)
        assert len(trials) == 2
    assert "test_churn_auc_btyd" in children["btyd"].data.metrics

    artifacts = {a.path for a in MlflowClient().list_artifacts(result["run_id"])}
    assert {"leaderboard.csv", "data", "plots", "evaluation"} <= artifacts
    family_plots = {a.path for a in MlflowClient().list_artifacts(children["catboost"].info.run_id,
                                                                 "plots")}
    assert {"plots/decile_calibration.png", "plots/gains.png", "plots/coverage.png",
            "plots/feature_importance.png"} <= family_plots


def test_winner_is_registered_as_champion_and_loads(trained):
    store, cfg, result = trained
    client = MlflowClient()
    champion = client.get_model_version_by_alias("clv", "champion")
    assert str(champion.version) == result["version"]
    assert champion.tags["family"] == result["winner"]
    assert champion.tags["test_window"].startswith("1998-03-31..1998-06-30|")
    assert champion.tags["promotion.reason"] == "no champion yet"
    model = mlflow.pyfunc.load_model("models:/clv@champion")
    example = model.input_example
    out = model.predict(example)
    assert list(out.columns) == OUTPUT_COLUMNS
    assert out["customer_id"].nunique() == example["customer_id"].nunique() == len(out)
    scored = out[out["status"] == "scored"]
    b = scored[["clv_lower_90", "clv_lower_80", "clv", "clv_upper_80", "clv_upper_90"]]
    assert (b.diff(axis=1).iloc[:, 1:] >= -1e-9).all().all()
    assert (b["clv_lower_90"] >= 0).all()
    assert scored["churn_probability"].between(0, 1).all()
    assert set(scored["trend"]) <= {"growing", "stable", "declining"}
    assert set(scored["segment"]) <= {"high", "medium", "low"}
    assert (out["horizon_days"] == 91).all()


def test_rerun_same_seed_same_leaderboard_and_champion_stays(trained):
    from clv_training.jobs.train import run

    store, cfg, first = trained
    again = run(cfg)
    pd.testing.assert_frame_equal(first["leaderboard"], again["leaderboard"])
    client = MlflowClient()
    # An equal challenger does not beat the champion: the champion stays.
    assert str(client.get_model_version_by_alias("clv", "champion").version) == first["version"]
    assert str(client.get_model_version_by_alias("clv", "challenger").version) == again["version"]
    assert again["promoted"] is False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes, content_type: str = "application/json"):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture(scope="module")
def server(trained):
    store, cfg, _ = trained
    port = _free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": cfg.mlflow.tracking_uri,
    }
    process = subprocess.Popen(
        [f"{bin_dir}/mlflow", "models", "serve", "-m", "models:/clv@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited: {process.stdout.read().decode()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            time.sleep(1)
    else:
        process.kill()
        pytest.fail("server did not answer /ping within 180 s")
    yield url
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def _serving_example() -> bytes:
    folder = mlflow.artifacts.download_artifacts("models:/clv@champion")
    return (Path(folder) / "serving_input_example.json").read_bytes()


def test_server_scores_the_saved_example_like_batch(server):
    status, text = _post(f"{server}/invocations", _serving_example())
    assert status == 200, text
    served = pd.DataFrame(json.loads(text)["predictions"])
    assert list(served.columns) == OUTPUT_COLUMNS
    model = mlflow.pyfunc.load_model("models:/clv@champion")
    batch = model.predict(model.input_example)
    pd.testing.assert_series_equal(served["customer_id"].astype(str), batch["customer_id"])
    np.testing.assert_allclose(served["clv"].to_numpy(float), batch["clv"].to_numpy(float),
                               rtol=1e-9)
    np.testing.assert_allclose(served["churn_probability"].to_numpy(float),
                               batch["churn_probability"].to_numpy(float), rtol=1e-9)


BAD = {
    "missing column": {"dataframe_split": {"columns": ["customer_id", "timestamp"],
                                           "data": [["a", "1998-01-01"]]}},
    "bad timestamp": {"dataframe_split": {"columns": ["customer_id", "timestamp", "amount"],
                                          "data": [["a", "not a date", 10.0]]}},
    "negative amount": {"dataframe_split": {"columns": ["customer_id", "timestamp", "amount"],
                                            "data": [["a", "1998-01-01", -5.0],
                                                     ["b", "1998-01-02", 5.0]]}},
    "text amount": {"dataframe_split": {"columns": ["customer_id", "timestamp", "amount"],
                                        "data": [["a", "1998-01-01", "ten"]]}},
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_payloads_get_4xx_naming_the_problem(server, case):
    status, text = _post(f"{server}/invocations", json.dumps(BAD[case]).encode())
    assert 400 <= status < 500, (case, status, text)
    assert any(word in text for word in ("amount", "timestamp", "column")), text


def test_empty_and_broken_bodies_get_4xx_and_server_keeps_serving(server):
    assert 400 <= _post(f"{server}/invocations", b"")[0] < 500
    assert 400 <= _post(f"{server}/invocations", b"{not json")[0] < 500
    status, _ = _post(f"{server}/invocations", _serving_example())
    assert status == 200


def test_one_customer_and_customers_without_an_occasion(trained):
    model = mlflow.pyfunc.load_model("models:/clv@champion")
    one = pd.DataFrame({"customer_id": ["00042"], "timestamp": pd.to_datetime(["1998-01-05"]),
                        "amount": [25.0]})
    out = model.predict(one)
    assert out["customer_id"].tolist() == ["00042"] and out["status"].tolist() == ["scored"]
    assert out["as_of"].tolist() == ["1998-01-05"]

    mixed = pd.DataFrame({
        "customer_id": ["a", "a", "b", "c"],
        "timestamp": pd.to_datetime(["1998-01-05", "1998-02-01", "1998-01-10", "1998-05-01"]),
        "amount": [20.0, 5.0, 0.0, 9.0],
    })
    out = model.predict(mixed, params={"as_of": "1998-03-01"}).set_index("customer_id")
    assert out.loc["a", "status"] == "scored"
    assert out.loc["b", "status"] == "no_occasion:nonpositive_net_day"
    assert out.loc["c", "status"] == "no_occasion:after_observation_end"
    assert np.isnan(out.loc["b", "clv"])


def test_as_of_before_every_transaction_scores_nobody_and_says_why(trained):
    model = mlflow.pyfunc.load_model("models:/clv@champion")
    late = pd.DataFrame({"customer_id": ["a", "b"],
                         "timestamp": pd.to_datetime(["1998-01-05", "1998-02-01"]),
                         "amount": [20.0, 5.0]})
    out = model.predict(late, params={"as_of": "1997-06-30"})
    assert list(out.columns) == OUTPUT_COLUMNS
    assert out["status"].tolist() == ["no_occasion:after_observation_end"] * 2
    assert out["clv"].isna().all()


def test_batch_scoring_a_csv_matches_the_pyfunc(trained, tmp_path):
    """`make predict`'s job on a CSV with its own column names and date format."""
    from hydra import compose, initialize_config_dir

    from clv_training.jobs.predict import score_file
    from tests.conftest import CONF, ROOT

    store, cfg, _ = trained
    model = mlflow.pyfunc.load_model("models:/clv@champion")
    example = model.input_example
    source = pd.DataFrame({
        "Customer": example["customer_id"],
        "When": pd.to_datetime(example["timestamp"]).dt.strftime("%d/%m/%Y"),
        "Revenue": example["amount"],
    })
    path = tmp_path / "tx.csv"
    source.to_csv(path, index=False)
    output = tmp_path / "out" / "scores.csv"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        predict_cfg = compose("predict", overrides=[
            f"input={path}", f"output={output}", f"paths.root={ROOT}",
            f"paths.mlruns={store}", "paths.output_dir=unused",
            "data.columns.customer_id=Customer", "data.columns.timestamp=When",
            "data.columns.amount=Revenue", "data.date_format=%d/%m/%Y",
        ])
    scored = score_file(predict_cfg)
    written = pd.read_csv(output, dtype={"customer_id": str})
    expected = model.predict(example)
    assert written["customer_id"].tolist() == expected["customer_id"].tolist()
    np.testing.assert_allclose(written["clv"], expected["clv"], rtol=1e-9)
    assert list(scored.columns) == OUTPUT_COLUMNS
    assert [p.name for p in output.parent.iterdir()] == ["scores.csv"]  # no temp file left


def test_a_request_without_any_customer_id_is_a_contract_error(trained):
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model("models:/clv@champion")
    blank = pd.DataFrame({"customer_id": ["  "], "timestamp": pd.to_datetime(["1998-01-05"]),
                          "amount": [25.0]})
    with pytest.raises(MlflowException, match="none of the 1 rows has a customer id"):
        model.predict(blank)
