"""Smoke of the bench code: the feature-speed section at 10^3 rows, goals and the report."""

from __future__ import annotations

import numpy as np

from clv_training.bench import run


def test_speed_section_structure_and_same_rfm(tmp_path):
    out = run.bench_speed([1000], tmp_path, timeout=60, in_process=True)
    entry = out["sizes"]["1000"]
    for impl in ("ours", "lifetimes", "pymc_marketing"):
        assert entry[impl]["status"] == "ok"
        assert entry[impl]["rows"] <= 1000
        assert entry[impl]["rows_per_second"] > 0
    # The three implementations agree on the RFM columns they share.
    assert entry["same_rfm_as_lifetimes"] is True
    assert entry["same_rfm_as_pymc_marketing"] is True
    assert entry["ours"]["customers"] == entry["lifetimes"]["customers"] > 50


def test_goal_check_signs_and_markdown():
    table = {
        "catboost": {m: 1.0 for m in run.METRICS},
        "btyd": {m: 2.0 for m in run.METRICS},
        "lifetimes": {m: 0.5 for m in run.METRICS},
    }
    goal = run.goal_check(table, "catboost")
    # Greater is better: best peer is btyd (2.0), champion is 1.0 lower.
    assert goal["test_gini"] == {"champion": 1.0, "best_peer": "btyd", "peer_value": 2.0,
                                 "margin": -1.0, "beats": False}
    # Lower is better: best peer is lifetimes (0.5), champion 0.5 worse.
    assert goal["test_rmse"]["best_peer"] == "lifetimes"
    assert goal["test_rmse"]["beats"] is False
    # A btyd champion is compared with the other BTYD peer only, never with itself.
    assert run.goal_check(table, "btyd")["test_gini"]["best_peer"] == "lifetimes"
    assert set(run.goals(table, "btyd")) == {"champion", "catboost"}
    assert abs(run.slope([10, 100, 1000], [2.0, 20.0, 200.0]) - 1.0) < 1e-9
    assert run.slope([10], [1.0]) is None
    text = run.render_markdown({
        "size": "quick", "date": "2024-01-01", "command": "make bench-quick",
        "machine": run.machine_info(), "errors": {"e2e": "boom"},
        "speed": out_speed(),
    })
    assert "| 1,000 | ours | ok |" in text
    assert "Not run. boom" in text
    assert "Goal ours >= 10x" not in text  # only sizes 10^6 and 10^7 carry the goal


def out_speed():
    ok = {"status": "ok", "seconds": 0.5, "rows_per_second": 2000.0, "customers": 10}
    return {"timeout_seconds": 5, "sizes": {"1000": {
        "ours": ok, "lifetimes": ok, "pymc_marketing": {"status": "timeout"},
        "speedup_vs_lifetimes": 1.0, "same_rfm_as_lifetimes": True,
        "speedup_vs_pymc_marketing": ">10.0"}}}


def test_parse_time_v():
    text = ("\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02.50\n"
            "\tMaximum resident set size (kbytes): 2097152\n\tUser time (seconds): 3.5\n")
    found = run._parse_time_v(text)
    assert found["time_v_wall_seconds"] == 62.5
    assert found["max_rss_gib"] == 2.0
    assert found["user_seconds"] == 3.5


def test_one_customer_requests_send_one_customer_each(monkeypatch):
    import json

    import pandas as pd

    tx = pd.DataFrame({"customer_id": ["a", "a", "b", "c", "c", "c"],
                       "timestamp": pd.to_datetime(["2020-01-01"] * 6),
                       "amount": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
    seen = []

    def fake_post(url, body):
        rows = json.loads(body)["dataframe_split"]["data"]
        ids = sorted({r[0] for r in rows})
        seen.append(ids)
        if ids == ["b"]:
            raise run.ServingError(400, "refused")
        return 0.01, len(ids)

    monkeypatch.setattr(run, "_post", fake_post)
    ids_all = np.array(["a", "b", "c"])
    found = run._time_requests("u", tx, ids_all, 1, 30, np.random.default_rng(0))
    assert all(len(ids) == 1 for ids in seen)
    assert len(seen) == 30  # one post per request, each a fresh customer
    n_b = sum(ids == ["b"] for ids in seen)
    assert 0 < n_b < 30
    assert found["status"] == "ok" and found["customers"] == 1
    assert found["failed_requests"] == {"400": n_b}
    assert found["requests"] == 30 - n_b
    assert 1.0 <= found["rows_per_request"] <= 3.0
    assert abs(found["p50_ms"] - 10.0) < 1e-9
    many = run._time_requests("u", tx, ids_all, 2, 30, np.random.default_rng(0))
    assert many["customers"] == 2
