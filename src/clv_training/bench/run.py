"""``make bench``: quality, feature speed, end-to-end scale and serving, in one report.

Run ``python -m clv_training.bench.run --size full`` (or ``--size quick``). Sections:

quality
    The training job on CDNOW (temporal protocol), its champion against BG/NBD +
    Gamma-Gamma by PyMC-Marketing (our ``btyd`` family) and by lifetimes, and the formula,
    on the same cutoffs and test window; then the customer-split protocol of Wang, Liu and
    Miao (2019): features at one cutoff, customers split 80/20 at random (seeded).
speed
    Feature building throughput (rows/s) of ours vs lifetimes' and PyMC-Marketing's RFM
    summaries on generated logs, each in its own process with a timeout.
e2e
    The training job in a subprocess on generated Parquet logs under ``/usr/bin/time -v``:
    wall time, peak memory and their log-log growth with size.
serving
    ``mlflow models serve`` of the quality run's champion: customers/s for requests of
    several sizes and p50/p99 latency for one customer.
scale
    The full feature set on DuckDB reading a Parquet log out of core (10^8 rows in the
    full size) in a fresh process per memory limit: seconds, peak memory, spill.
spark
    The same features on Spark local mode (10^6 rows in the full size): start-up,
    transfer, feature seconds and exact parity with DuckDB.

A run merges into the existing results file: sections it did not run keep their figures
and the provenance (date, commit, command) of the run that made them.

Everything writes to a temporary folder (MLflow store included); only
``bench/results[-quick].json`` and ``bench/RESULTS[-quick].md`` are written in the project.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import multiprocessing as mp
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clv_training import config
from clv_training.bench import generator, peers

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
METRICS = (
    "test_rmse", "test_mae", "test_spearman", "test_gini", "test_decile_mape",
    "test_top_decile_capture", "test_total_error", "test_coverage_80", "test_coverage_90",
)
#: Metric -> True when greater is better, for the champion-vs-BTYD goal.
GOAL_METRICS = {"test_gini": True, "test_spearman": True, "test_decile_mape": False,
                "test_rmse": False}
BTYD_PEERS = ("btyd", "lifetimes")
PACKAGES = ("numpy", "pandas", "duckdb", "pyarrow", "scikit-learn", "catboost", "mlflow",
            "optuna", "pymc", "pymc-marketing", "lifetimes", "hydra-core", "scipy",
            "ibis-framework", "pyspark")
SECTIONS = ("quality", "serving", "speed", "e2e", "scale", "spark")

SIZES: dict[str, dict[str, Any]] = {
    "quick": {
        "quality_data": "cdnow_sample", "quality_trials": 2,
        "speed_rows": [10**4, 10**5], "e2e_rows": [10**4, 10**5], "e2e_trials": 1,
        "serve_customers": [1, 100, 1000], "serve_single_requests": 50,
        "speed_timeout": 120, "e2e_timeout": 600,
        "scale_rows": [10**6], "scale_memory_limits": ["1GB", "512MB"], "scale_timeout": 600,
        "spark_rows": 10**5, "spark_timeout": 600,
    },
    "full": {
        "quality_data": "cdnow", "quality_trials": None,  # conf/tuning default
        "speed_rows": [10**5, 10**6, 10**7], "e2e_rows": [10**5, 10**6, 10**7],
        "e2e_trials": 2, "serve_customers": [1, 100, 10_000], "serve_single_requests": 200,
        # Limitation: a peer slower than this at a size is recorded as a timeout.
        "speed_timeout": 300,
        # Limitation: the 10^7 job is stopped after this long and recorded as a failure.
        "e2e_timeout": 1800,
        "scale_rows": [10**8], "scale_memory_limits": ["4GB", "2GB"],
        # Limitation: a scale run (or the generator) slower than this is a timeout.
        "scale_timeout": 1800,
        "spark_rows": 10**6, "spark_timeout": 1200,
    },
}
SEED = 42


# --------------------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """Cores, RAM, CPU model, Python and package versions."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = int(line.split()[1]) / 2**20
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(ram, 1),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }


# --------------------------------------------------------------------------------------
# Quality
# --------------------------------------------------------------------------------------


def compose_train(overrides: list[str], store: Path):
    """Compose conf/train.yaml in code, pointed at a temporary store."""
    return config.compose_train(overrides, root=ROOT, store=store, experiment="bench")


def _scores(y: np.ndarray, pred: np.ndarray, lower=None, upper=None) -> dict[str, float]:
    from clv_training.evaluation import metrics as M

    found = M.regression_metrics(y, pred, "test")
    if lower is not None:
        found.update(M.interval_metrics(y, lower, upper, "test"))
    return {k: float(found.get(k, np.nan)) for k in METRICS}


def _conformal(cfg, cal_pred, cal_y, pred):
    from clv_training.intervals import ConformalIntervals

    intervals = ConformalIntervals(
        levels=tuple(cfg.intervals.levels), n_bins=int(cfg.intervals.n_bins)
    ).fit(cal_pred, cal_y)
    bounds = intervals.predict(pred)
    return ({lv: lo for lv, (lo, _) in bounds.items()},
            {lv: hi for lv, (_, hi) in bounds.items()})


def goal_check(table: dict[str, dict[str, float]], model: str) -> dict[str, Any]:
    """``model`` vs the best BTYD peer other than itself on each goal metric.

    When the champion is our btyd family, the only other BTYD peer is lifetimes (the same
    model fitted by another library), so the margins are about 0 by construction.
    """
    out = {}
    for metric, greater in GOAL_METRICS.items():
        peers_ok = {p: table[p][metric] for p in BTYD_PEERS
                    if p in table and p != model and table[p][metric] is not None
                    and np.isfinite(table[p][metric])}
        mine = table[model][metric]
        if not peers_ok:
            out[metric] = {"champion": mine, "best_peer": None, "peer_value": None,
                           "margin": None, "beats": None}
            continue
        best = (max if greater else min)(peers_ok, key=peers_ok.get)
        margin = mine - peers_ok[best]
        beats = bool(margin > 0) if greater else bool(margin < 0)
        out[metric] = {"champion": mine, "best_peer": best, "peer_value": peers_ok[best],
                       "margin": float(margin), "beats": beats}
    return out


def goals(table: dict[str, dict[str, float]], champion: str) -> dict[str, Any]:
    """The champion's goal check, plus each ML family's (for when BG/NBD wins)."""
    found = {"champion": goal_check(table, champion)}
    for family in ("sklearn", "catboost"):
        if family in table and family != champion:
            found[family] = goal_check(table, family)
    return found


def bench_quality(size: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Temporal and customer-split leaderboards on CDNOW; returns tables and the store."""
    from clv_training.config import DataConfig, FeaturesConfig, to_dataclass
    from clv_training.data.contract import prepare_transactions
    from clv_training.data.load import read_raw
    from clv_training.jobs import train
    from clv_training.models import make_model
    from clv_training.split import is_calibration_customer, make_examples

    store = tmp / "quality_mlruns"
    overrides = [f"data={size['quality_data']}"]
    if size["quality_trials"] is not None:
        overrides.append(f"tuning.n_trials={size['quality_trials']}")
    cfg = compose_train(overrides, store)
    started = time.perf_counter()
    out = train.run(cfg)
    job_seconds = time.perf_counter() - started
    plan, winner, results = out["plan"], out["winner"], out["results"]
    horizon = int(cfg.horizon_days)

    # The job's own examples, rebuilt the same way (deterministic), to score the peers.
    data_cfg = to_dataclass(DataConfig, cfg.data)
    tx = prepare_transactions(read_raw(data_cfg, root=ROOT), data_cfg).transactions
    feat_cfg = to_dataclass(FeaturesConfig, cfg.features)
    # The same BTYD feature columns as the job (seeded fits on each cutoff's history, no
    # label), which CatBoost's baseline_feature needs.
    btyd_hook = None
    if feat_cfg.btyd_features:
        from clv_training.features.btyd import BTYDFeatures

        btyd_hook = BTYDFeatures(horizon, int(cfg.seed),
                                 max_fit_customers=cfg.models.btyd.params.get(
                                     "max_fit_customers"))
    examples = make_examples(tx, plan.final_cutoffs, horizon, feat_cfg, extra=btyd_hook)
    examples["calibration"] = is_calibration_customer(
        examples["customer_id"], float(cfg.split.calibration_fraction), int(cfg.seed)
    )
    at = lambda c: examples[examples["cutoff"] == c].reset_index(drop=True)  # noqa: E731
    test, val = at(plan.test), at(plan.validation)
    y_test = test["target_spend"].to_numpy(float)

    temporal: dict[str, dict[str, float]] = {}
    for family, result in results.items():
        if result.status == "ok":
            temporal[family] = {k: float(result.metrics.get(k, np.nan)) for k in METRICS}
    # Alignment check: the champion's stored predictions give its logged test RMSE here.
    check = _scores(y_test, results[winner].test_pred)["test_rmse"]
    if not np.isclose(check, temporal[winner]["test_rmse"], rtol=1e-9):
        raise RuntimeError(f"test rows do not line up with the job's ({check} vs "
                           f"{temporal[winner]['test_rmse']})")

    # lifetimes on the rows our btyd family fits: latest training cutoff of the test fit
    # (validation), customers not held out; conformal on the held-out ones, as the job does.
    fit_rows = val[~val["calibration"]]
    cal_rows = val[val["calibration"]]
    life = peers.LifetimesBTYD(horizon).fit(fit_rows)
    pred = life.predict(test)
    lower, upper = _conformal(cfg, life.predict(cal_rows),
                              cal_rows["target_spend"].to_numpy(float), pred)
    temporal["lifetimes"] = _scores(y_test, pred, lower, upper)
    fitted_params = {"lifetimes": {**life.bgnbd_params_, **life.gamma_gamma_params_,
                                   "penalizer": life.penalizer_}}
    btyd_diag = {}
    if results.get("btyd") is not None and results["btyd"].status == "ok":
        import mlflow

        logged = mlflow.get_run(results["btyd"].run_id).data.metrics
        btyd_diag = {k: logged.get(f"fit_{k}") for k in ("r", "alpha", "a", "b", "p", "q", "v")}

    # Customer split (Wang, Liu and Miao 2019): features at the test cutoff, targets in
    # the last horizon, customers 80/20 at random (seeded); conformal on a held-out share
    # of the 80%, chosen by the job's hash rule.
    rng = np.random.default_rng(int(cfg.seed))
    in_test = rng.random(len(test)) < 0.2
    train_rows = test[~in_test]
    fit_part, cal_part = train_rows[~train_rows["calibration"]], train_rows[train_rows[
        "calibration"]]
    held = test[in_test]
    y_held = held["target_spend"].to_numpy(float)
    split_table: dict[str, dict[str, float]] = {}
    for family, result in results.items():
        if result.status != "ok":
            continue
        model = make_model(family, result.params, horizon, int(cfg.seed))
        model.fit(fit_part, fit_part["target_spend"].to_numpy(float))
        pred = model.predict(held)
        lower, upper = _conformal(cfg, model.predict(cal_part),
                                  cal_part["target_spend"].to_numpy(float), pred)
        split_table[family] = _scores(y_held, pred, lower, upper)
    life = peers.LifetimesBTYD(horizon).fit(fit_part)
    pred = life.predict(held)
    lower, upper = _conformal(cfg, life.predict(cal_part),
                              cal_part["target_spend"].to_numpy(float), pred)
    split_table["lifetimes"] = _scores(y_held, pred, lower, upper)

    return {
        "data": str(cfg.data.name),
        "command_overrides": overrides,
        "n_trials": int(cfg.tuning.n_trials),
        "horizon_days": horizon,
        "cutoffs": {"train": [str(c.date()) for c in plan.train],
                    "validation": str(plan.validation.date()),
                    "test": str(plan.test.date()),
                    "observation_end": str(plan.observation_end.date())},
        "champion": winner,
        "champion_params": results[winner].params,
        "selection": f"val_{cfg.selection.metric}",
        "job_seconds": job_seconds,
        "temporal": temporal,
        "temporal_goal": goals(temporal, winner),
        "customer_split": {
            "cutoff": str(plan.test.date()), "n_train": int(len(train_rows)),
            "n_fit": int(len(fit_part)), "n_calibration": int(len(cal_part)),
            "n_test": int(len(held)), "table": split_table,
        },
        "customer_split_goal": goals(split_table, winner),
        "fitted_btyd": {"pymc_marketing": btyd_diag, **fitted_params},
        "_store": str(store),
        "_transactions": tx,
    }


# --------------------------------------------------------------------------------------
# Feature speed
# --------------------------------------------------------------------------------------


#: Rows of the untimed warm-up call each implementation makes before the timed one.
WARMUP_ROWS = 1_000


def _read_log(path: str) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    frame["customer_id"] = frame["customer_id"].astype(str)
    return frame


def _rfm_impl(impl: str, frame: pd.DataFrame, cutoff: pd.Timestamp, tmp: str):
    if impl == "ours":
        from clv_training.config import FeaturesConfig
        from clv_training.features.build import build_features

        found = build_features(frame, cutoff, FeaturesConfig(duckdb_temp_directory=tmp))
        return found[["frequency", "recency", "T", "monetary_value"]]
    if impl == "lifetimes":
        return peers.lifetimes_rfm(frame, cutoff)
    if impl == "pymc_marketing":
        found = peers.pymc_marketing_rfm(frame, cutoff)
        return found.set_index("customer_id")
    raise ValueError(f"unknown implementation {impl!r}")


def _warm_imports(impl: str) -> None:
    """Import each implementation's modules before the clock starts."""
    if impl == "ours":
        import clv_training.features.build  # noqa: F401
    elif impl == "lifetimes":
        import lifetimes.utils  # noqa: F401
    elif impl == "pymc_marketing":
        import pymc_marketing.clv.utils  # noqa: F401


def time_features(impl: str, path: str, tmp: str) -> dict[str, Any]:
    """Read the log (untimed), then time one feature/RFM build at the last day."""
    frame = _read_log(path)
    cutoff = frame["timestamp"].max().normalize()
    _warm_imports(impl)
    # Every implementation first runs once on a small slice, so one-time costs (lazy
    # imports, Ibis/SQL compilation, pandas caches) are reported apart from the timed call.
    started = time.perf_counter()
    _rfm_impl(impl, frame.head(WARMUP_ROWS), cutoff, tmp)
    warmup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    found = _rfm_impl(impl, frame, cutoff, tmp)
    seconds = time.perf_counter() - started
    # Limitation: no memory figure here; ru_maxrss of a spawned child starts from the
    # parent's high-water mark, so it would not measure the call.
    return {
        "status": "ok",
        "seconds": seconds,
        "warmup_seconds": warmup_seconds,
        "rows": int(len(frame)),
        "rows_per_second": len(frame) / seconds,
        "customers": int(len(found)),
        "sum_frequency": float(found["frequency"].sum()),
        "sum_recency": float(found["recency"].sum()),
        "sum_T": float(found["T"].sum()),
    }


def _child(impl: str, path: str, tmp: str, queue) -> None:  # pragma: no cover - subprocess
    try:
        queue.put(time_features(impl, path, tmp))
    except Exception as error:  # noqa: BLE001 - reported in the results
        queue.put({"status": "error", "error": f"{type(error).__name__}: {error}"})


def _in_subprocess(impl: str, path: str, tmp: str, timeout: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(impl, path, tmp, queue))
    proc.start()
    try:
        return queue.get(timeout=timeout)
    except Exception:  # noqa: BLE001 - queue.Empty on timeout
        return {"status": "timeout", "timeout_seconds": timeout}
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


def log_path(tmp: Path, n_rows: int) -> Path:
    """The generated log of ``n_rows`` rows under ``tmp`` (written on first use)."""
    path = tmp / f"log_{n_rows}.parquet"
    if not path.exists():
        started = time.perf_counter()
        table = generator.generate_rows(n_rows, seed=SEED)
        generator.write_parquet(table, path)
        logger.info("generated %d rows in %.1f s -> %s", table.num_rows,
                    time.perf_counter() - started, path)
    return path


def bench_speed(rows: list[int], tmp: Path, timeout: float, *, in_process: bool = False
                ) -> dict[str, Any]:
    """Feature building throughput of ours, lifetimes and PyMC-Marketing per size."""
    out: dict[str, Any] = {"timeout_seconds": timeout, "sizes": {}}
    for n in rows:
        started = time.perf_counter()
        path = log_path(tmp, n)
        entry: dict[str, Any] = {"generator_and_write_seconds": time.perf_counter() - started}
        for impl in ("ours", "lifetimes", "pymc_marketing"):
            logger.info("speed: %s at %d rows", impl, n)
            if in_process:
                entry[impl] = time_features(impl, str(path), str(tmp))
            else:
                entry[impl] = _in_subprocess(impl, str(path), str(tmp), timeout)
        ours = entry["ours"]
        for impl in ("lifetimes", "pymc_marketing"):
            peer = entry[impl]
            if ours.get("status") == "ok" and peer.get("status") == "ok":
                entry[f"speedup_vs_{impl}"] = peer["seconds"] / ours["seconds"]
                entry[f"same_rfm_as_{impl}"] = bool(
                    peer["customers"] == ours["customers"]
                    and all(np.isclose(peer[k], ours[k], rtol=1e-9)
                            for k in ("sum_frequency", "sum_recency", "sum_T")))
            elif ours.get("status") == "ok" and peer.get("status") == "timeout":
                entry[f"speedup_vs_{impl}"] = f">{timeout / ours['seconds']:.1f}"
        out["sizes"][str(n)] = entry
    return out


# --------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------


def _parse_time_v(text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if match:
        found["max_rss_gib"] = int(match.group(1)) / 2**20
    match = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if match:
        parts = [float(p) for p in match.group(1).split(":")]
        found["time_v_wall_seconds"] = sum(v * 60**i for i, v in enumerate(reversed(parts)))
    for key, label in (("user_seconds", "User time"), ("system_seconds", "System time")):
        match = re.search(label + r" \(seconds\): ([\d.]+)", text)
        if match:
            found[key] = float(match.group(1))
    return found


def _env(store: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
    env["MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK"] = "true"
    return env


def slope(sizes: list[float], values: list[float]) -> float | None:
    """Log-log least-squares slope (growth exponent); None with fewer than 2 points."""
    pairs = [(s, v) for s, v in zip(sizes, values) if v and v > 0]
    if len(pairs) < 2:
        return None
    x, y = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    return float(np.polyfit(x, y, 1)[0])


def bench_e2e(rows: list[int], tmp: Path, trials: int, timeout: float) -> dict[str, Any]:
    """The training job in a subprocess per size: wall time and peak memory."""
    out: dict[str, Any] = {"n_trials": trials, "timeout_seconds": timeout, "sizes": {}}
    for n in rows:
        path = log_path(tmp, n)
        store = tmp / f"e2e_mlruns_{n}"
        command = [
            "/usr/bin/time", "-v", str(BIN / "python"), "-m", "clv_training.jobs.train",
            "data=csv", f"data.path={path}", "data.name=synthetic",
            f"paths.mlruns={store}", f"hydra.run.dir={tmp}/hydra_{n}",
            f"tuning.n_trials={trials}", "tuning.show_progress_bar=false",
            "mlflow.experiment=bench",
        ]
        logger.info("e2e: %d rows: %s", n, shlex.join(command))
        started = time.perf_counter()
        log_file = tmp / f"e2e_{n}.log"
        with log_file.open("w") as sink:
            try:
                proc = subprocess.run(command, cwd=ROOT, env=_env(store), stdout=sink,
                                      stderr=subprocess.STDOUT, timeout=timeout, check=False)
                code: int | None = proc.returncode
            except subprocess.TimeoutExpired:
                code = None
        wall = time.perf_counter() - started
        text = log_file.read_text(errors="replace")
        entry: dict[str, Any] = {"rows": n, "wall_seconds": wall, **_parse_time_v(text)}
        if code is None:
            entry.update(status="timeout", reason=f"stopped after {timeout:.0f} s")
        elif code != 0:
            tail = [ln for ln in text.splitlines() if ln.strip()][-25:]
            entry.update(status="failed", returncode=code, reason="\n".join(tail))
        else:
            entry["status"] = "ok"
            match = re.search(r"winner: (\w+)", text)
            entry["winner"] = match.group(1) if match else None
        out["sizes"][str(n)] = entry
    ok = [e for e in out["sizes"].values() if e["status"] == "ok"]
    out["time_exponent"] = slope([e["rows"] for e in ok], [e["wall_seconds"] for e in ok])
    out["memory_exponent"] = slope([e["rows"] for e in ok], [e.get("max_rss_gib") for e in ok])
    return out


# --------------------------------------------------------------------------------------
# Scale (DuckDB out of core) and Spark local mode
# --------------------------------------------------------------------------------------

#: Decimal and binary units DuckDB accepts in ``memory_limit``.
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
#: Disk a log of one row needs at the most (Parquet log ~10 B, spill and output), for the
#: free-space check before a scale run.
DISK_BYTES_PER_ROW = 80


def limit_bytes(limit: str) -> int:
    """Bytes of a DuckDB memory limit such as ``4GB`` (10^9) or ``2GiB`` (2^30)."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", str(limit))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a memory limit: {limit!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower() or "b"])


def _run_worker(task: list[str], tmp: Path, name: str, timeout: float) -> dict[str, Any]:
    """``python -m clv_training.bench.worker <task>`` under ``/usr/bin/time -v``.

    The worker runs in its own process group, so a timeout stops it and its children (the
    Spark JVM) together. Returns the worker's JSON result with the process's wall time and
    peak memory; a killed or crashed worker gets status ``oom`` (SIGKILL, what the kernel's
    OOM killer sends), ``timeout`` or ``error``.
    """
    result = tmp / f"{name}.json"
    result.unlink(missing_ok=True)
    command = ["/usr/bin/time", "-v", str(BIN / "python"), "-m", "clv_training.bench.worker",
               *task, "--result", str(result)]
    logger.info("worker %s: %s", name, shlex.join(command))
    log_file = tmp / f"{name}.log"
    load_before = list(os.getloadavg())
    started = time.perf_counter()
    with log_file.open("w") as sink:
        proc = subprocess.Popen(command, cwd=ROOT, env=_env(tmp / "unused_mlruns"),
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
            os.killpg(proc.pid, 9)  # the group this call started, and only it
            proc.wait(30)
    wall = time.perf_counter() - started
    text = log_file.read_text(errors="replace")
    timing = _parse_time_v(text)
    entry: dict[str, Any] = {}
    if result.exists():
        entry.update(json.loads(result.read_text()))
    if code is None:
        entry.update(status="timeout", error=f"stopped after {timeout:.0f} s")
    elif not result.exists():
        tail = "\n".join([ln for ln in text.splitlines() if ln.strip()][-15:])
        killed = "terminated by signal 9" in text or code in (-9, 137)
        entry.update(status="oom" if killed else "error",
                     error=f"worker exited with {code} and no result:\n{tail}")
    entry["process_wall_seconds"] = wall
    entry.update(timing)
    # Other jobs on the shared cores slow a run down: the load average says how busy.
    entry["load_average_before"], entry["load_average_after"] = load_before, list(
        os.getloadavg())
    return entry


def chunked_log(tmp: Path, n_rows: int, timeout: float) -> tuple[Path, dict[str, Any]]:
    """The chunked Parquet log of ``n_rows`` rows (seed :data:`SEED`) under ``tmp``,
    written by a worker process (so its peak memory is measured)."""
    path = tmp / f"chunked_log_{n_rows}.parquet"
    found = _run_worker(["generate", "--log", str(path), "--rows", str(n_rows),
                         "--seed", str(SEED),
                         "--chunk-rows", str(generator.CHUNK_ROWS)], tmp,
                        f"generate_{n_rows}", timeout)
    if found.get("status") != "ok":
        raise RuntimeError(f"generating {n_rows} rows failed: {found.get('error')}")
    return path, found


def bench_scale(rows: list[int], limits: list[str], tmp: Path, timeout: float
                ) -> dict[str, Any]:
    """The full feature set on DuckDB reading a Parquet log, per size and memory limit.

    Each run is a fresh worker process under ``/usr/bin/time -v`` with its own spill folder
    under ``tmp``; the features go to a Parquet file, which is removed after its size is
    recorded (as are the spill folder and, after its runs, the log).
    """
    out: dict[str, Any] = {"timeout_seconds": timeout, "memory_limits": list(limits),
                           "folder": str(tmp), "sizes": {}}
    for n in rows:
        free = shutil.disk_usage(tmp).free
        entry: dict[str, Any] = {"disk_free_bytes_before": free,
                                 "disk_needed_bytes_estimate": n * DISK_BYTES_PER_ROW}
        out["sizes"][str(n)] = entry
        if free < n * DISK_BYTES_PER_ROW:
            entry["status"] = "skipped"
            entry["error"] = (f"{free / 2**30:.1f} GiB free in {tmp}, about "
                              f"{n * DISK_BYTES_PER_ROW / 2**30:.1f} GiB needed")
            continue
        path, entry["generator"] = chunked_log(tmp, n, timeout)
        entry["runs"] = {}
        try:
            for limit in limits:
                spill = tmp / f"spill_{n}_{limit}"
                features = tmp / f"features_{n}_{limit}.parquet"
                logger.info("scale: %d rows, memory limit %s", n, limit)
                found = _run_worker(["duckdb", "--log", str(path), "--memory-limit", limit,
                                     "--spill-dir", str(spill), "--out", str(features)],
                                    tmp, f"scale_{n}_{limit}", timeout)
                found["memory_limit_bytes"] = limit_bytes(limit)
                rss = found.get("max_rss_gib")
                found["rss_within_limit"] = (None if rss is None
                                             else bool(rss * 2**30 <= limit_bytes(limit)))
                found["spill_left_bytes"] = worker_folder_bytes(spill)
                entry["runs"][limit] = found
                shutil.rmtree(spill, ignore_errors=True)
                features.unlink(missing_ok=True)
        finally:
            path.unlink(missing_ok=True)
        entry["disk_free_bytes_after"] = shutil.disk_usage(tmp).free
    return out


def worker_folder_bytes(folder: Path) -> int:
    """Bytes under ``folder`` (see :func:`clv_training.bench.worker.folder_bytes`)."""
    from clv_training.bench.worker import folder_bytes

    return folder_bytes(folder)


def bench_spark(n_rows: int, tmp: Path, timeout: float, master: str = "local[2]"
                ) -> dict[str, Any]:
    """Spark local-mode features on a generated log, with a parity check against DuckDB."""
    path, generated = chunked_log(tmp, n_rows, timeout)
    try:
        found = _run_worker(["spark", "--log", str(path), "--master", master], tmp,
                            f"spark_{n_rows}", timeout)
    finally:
        path.unlink(missing_ok=True)
    # Limitation: peak RSS is the Python driver's (``/usr/bin/time`` follows the worker,
    # not the JVM it starts), so it says little about Spark's memory.
    found["driver_max_rss_gib"] = found.pop("max_rss_gib", None)
    return {"timeout_seconds": timeout, "generator": generated, "sizes": {str(n_rows): found}}


# --------------------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _payload(tx: pd.DataFrame, ids: np.ndarray) -> bytes:
    rows = tx[tx["customer_id"].isin(set(ids))]
    split = {
        "columns": ["customer_id", "timestamp", "amount"],
        "data": list(zip(rows["customer_id"].astype(str),
                         rows["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S"),
                         rows["amount"].astype(float))),
    }
    return json.dumps({"dataframe_split": split}).encode()


class ServingError(RuntimeError):
    """The server answered with an HTTP error."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


def _post(url: str, body: bytes) -> tuple[float, int]:
    request = urllib.request.Request(url, data=body,
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=600) as response:  # loopback only
            found = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise ServingError(error.code, error.read().decode(errors="replace")[:1000]) from error
    seconds = time.perf_counter() - started
    predictions = found["predictions"] if isinstance(found, dict) else found
    return seconds, len(predictions)


def _time_requests(url: str, tx: pd.DataFrame, ids_all: np.ndarray, n: int,
                   single_requests: int, rng: np.random.Generator) -> dict[str, Any]:
    """Latency of requests of ``n`` customers; one-customer requests draw a new customer
    (with all of its rows) per request, larger ones repeat one random draw."""
    single = n == 1
    repeats = single_requests if single else max(3, min(20, 2000 // n))
    ids = rng.choice(ids_all, size=min(n, len(ids_all)), replace=False)
    body = _payload(tx, ids)
    times, rows_sent, errors = [], [], {}
    for _ in range(repeats):
        if single:
            ids = rng.choice(ids_all, size=1, replace=False)
            body = _payload(tx, ids)
        try:
            seconds, got = _post(url, body)
        except ServingError as error:
            errors[str(error.status)] = errors.get(str(error.status), 0) + 1
            continue
        if got != len(ids):
            raise RuntimeError(f"{got} predictions for {len(ids)} customers")
        times.append(seconds)
        rows_sent.append(int(tx["customer_id"].isin(set(ids)).sum()))
    if not times:
        return {"customers": n, "requests": repeats, "status": "every request failed",
                "errors": errors}
    times_a = np.asarray(times)
    return {
        "customers": int(len(ids)), "requests": len(times), "status": "ok",
        "failed_requests": errors,
        "rows_per_request": float(np.mean(rows_sent)),
        "customers_per_second": float(len(ids) / times_a.mean()),
        "p50_ms": float(np.percentile(times_a, 50) * 1000),
        "p99_ms": float(np.percentile(times_a, 99) * 1000),
        "mean_ms": float(times_a.mean() * 1000),
    }


def bench_serving(store: Path, tx: pd.DataFrame, customers: list[int], single_requests: int,
                  tmp: Path) -> dict[str, Any]:
    """Throughput and one-customer latency against ``mlflow models serve``."""
    port = _free_port()
    command = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/clv@champion",
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    log_file = (tmp / "serve.log").open("w")
    server = subprocess.Popen(command, cwd=tmp, env=_env(store), stdout=log_file,
                              stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"command": shlex.join(command), "requests": {}}
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the model server did not come up; see serve.log: "
                                   + (tmp / "serve.log").read_text()[-2000:])
            time.sleep(0.5)
        ids_all = np.sort(tx["customer_id"].astype(str).unique())
        rng = np.random.default_rng(SEED)
        _post(f"{base}/invocations", _payload(tx, ids_all[:5]))  # warm-up
        for n in customers:
            try:
                _post(f"{base}/invocations", _payload(tx, ids_all[:n]))
            except ServingError as error:
                out["requests"][str(n)] = {"customers": n, "status": f"HTTP {error.status}",
                                           "error": error.body}
                continue
            out["requests"][str(n)] = _time_requests(
                f"{base}/invocations", tx, ids_all, n, single_requests, rng)
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        log_file.close()
    return out


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    if isinstance(value, float):
        if not np.isfinite(value):
            return "-"
        return f"{value:,.{digits}g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def _quality_md(name: str, table: dict, goal: dict, champion: str) -> list[str]:
    labels = {"btyd": "btyd (BG/NBD+GG, PyMC-Marketing)",
              "lifetimes": "lifetimes (BG/NBD+GG)", "formula": "formula"}
    order = [champion] + [f for f in ("btyd", "lifetimes", "formula") if f != champion]
    order += [f for f in table if f not in order]
    rows = []
    for family in order:
        if family not in table:
            continue
        label = labels.get(family, family)
        if family == champion:
            label = f"**champion: {label}**"
        rows.append([label] + [table[family][m] for m in METRICS])
    lines = [f"#### {name}", ""] + _table(["model"] + [m[5:] for m in METRICS], rows) + [""]
    for who, check in goal.items():
        label = f"champion ({champion})" if who == "champion" else who
        goal_rows = [[m, g["champion"], g["best_peer"], g["peer_value"], g["margin"],
                      g["beats"]] for m, g in check.items()]
        lines += [f"Goal check, {label} vs the best other BTYD peer:", ""]
        lines += _table(["goal metric", label, "best BTYD peer", "peer value",
                         f"{who} - peer", f"{who} better"], goal_rows) + [""]
    return lines


def _provenance(results: dict[str, Any], section: str) -> dict[str, Any]:
    """The run that produced ``section`` (the file's own run for files without it)."""
    found = results.get("provenance", {}).get(section)
    if found:
        return found
    return {"date": results.get("date"), "command": results.get("command"),
            "git_commit": results.get("git_commit")}


def _provenance_line(results: dict[str, Any], section: str) -> list[str]:
    p = _provenance(results, section)
    commit = (p.get("git_commit") or "-")[:12]
    line = (f"_Measured by the run of {p.get('date')} at commit `{commit}`: "
            f"`{p.get('command')}`._")
    end = p.get("git_commit_at_end")
    if end and end != p.get("git_commit"):
        line += (f" The shared tree moved to `{end[:12]}` while the section ran; the "
                 "commit is the one at the start of the run.")
    return [line, ""]


def _machine_line(m: dict[str, Any]) -> str:
    return f"{m['cores']} cores, {m['ram_gib']} GiB RAM, {m['cpu_model']}"


def render_markdown(results: dict[str, Any]) -> str:
    """RESULTS.md: the machine, the runs, and one table per section with its provenance."""
    m = results["machine"]
    present = [s for s in SECTIONS if s in results or s in results.get("errors", {})]
    lines = [
        f"# Benchmark results ({results['size']})", "",
        f"- machine: {_machine_line(m)}",
        f"- python {m['python']}; " + ", ".join(
            f"{k} {v}" for k, v in m["packages"].items() if v),
        f"- last run: {results['date']}, `{results['command']}`, git commit "
        f"{results.get('git_commit')}, {_fmt(results.get('total_seconds'))} s", "",
        "Each section comes from the run named under its heading; sections that did not "
        "run say so. The file merges runs: a run replaces only the sections it ran.", "",
    ]
    rows = []
    for section in present:
        p = _provenance(results, section)
        rows.append([section, p.get("date"), (p.get("git_commit") or "-")[:12],
                     p.get("command"), p.get("seconds")])
    lines += _table(["section", "run date", "git commit", "command", "section s"], rows)
    lines.append("")
    commits = {(_provenance(results, s).get("git_commit") or "-") for s in present}
    if len(commits) > 1:
        lines += ["Sections come from different commits: each measures the code of its own "
                  "commit (`git log <commit>..HEAD` shows what changed since).", ""]
    machines = {_machine_line(r["machine"]) for r in results.get("runs", [])
                if r.get("machine")}
    if len(machines) > 1:
        lines += [f"The runs were on different machines: {sorted(machines)}.", ""]
    for r in results.get("runs", []):
        if r.get("load_average_at_start"):
            load = ", ".join(f"{v:.2f}" for v in r["load_average_at_start"])
            lines += [f"- load average (1, 5, 15 min) at the start of the run of "
                      f"{r['date']}: {load} on {m['cores']} shared cores"]
    lines += [f"- note: {n}" for n in results.get("notes", [])] + [""]
    errors = results.get("errors", {})
    q = results.get("quality")
    lines += ["## Quality (CDNOW)", ""]
    if q:
        lines += _provenance_line(results, "quality")
        c = q["cutoffs"]
        lines += [
            f"Data `{q['data']}`, horizon {q['horizon_days']} days, {q['n_trials']} Optuna "
            f"trials per tuned family, champion chosen on {q['selection']} (validation "
            f"window only): **{q['champion']}** with {q['champion_params']}. Training job "
            f"took {_fmt(q['job_seconds'])} s.", "",
            f"Temporal protocol: training cutoffs {c['train']}, validation {c['validation']},"
            f" test cutoff {c['test']}, test window ({c['test']}, {c['observation_end']}]. "
            "Every model is scored on the same customers and window. lifetimes is fitted on "
            "the rows our btyd family fits (features at the validation cutoff, customers "
            "not held out for calibration), time in weeks; coverage comes from the same "
            "conformal intervals every family gets (calibrated on held-out customers at the "
            "validation cutoff).", "",
        ]
        lines += [
            "Goal: the champion beats the best BTYD peer on test_gini, test_spearman, "
            "test_decile_mape and test_rmse in both protocols; the goal tables give the "
            "margin either way. Nothing here is tuned on the test window.", "",
        ]
        lines += _quality_md("Temporal protocol (test window)", q["temporal"],
                             q["temporal_goal"], q["champion"])
        s = q["customer_split"]
        lines += [
            f"Customer-split protocol (Wang, Liu and Miao 2019): features at {s['cutoff']}, "
            f"target = spend in the next {q['horizon_days']} days; customers split 80/20 at "
            f"random (seed {SEED}): {s['n_train']} train ({s['n_fit']} fit + "
            f"{s['n_calibration']} conformal calibration), {s['n_test']} test. Each family "
            "keeps the parameters the job chose on validation (nothing is tuned here).", "",
        ]
        lines += _quality_md("Customer-split protocol (20% test customers)", s["table"],
                             q["customer_split_goal"], q["champion"])
        lines += ["Fitted BTYD parameters at the validation cutoff (time in weeks):", "",
                  "```", json.dumps(q["fitted_btyd"], indent=1, default=str), "```", ""]
    else:
        lines += [f"Not run. {errors.get('quality', '')}", ""]

    sp = results.get("speed")
    lines += ["## Feature building speed", ""]
    if sp:
        lines += _provenance_line(results, "speed")
        lines += [
            "Generated logs (seed 42, `clv_training.bench.generator`); every implementation "
            "runs in its own fresh process (reading the Parquet file is not timed) at the "
            "last day of the log. Ours = the full feature set (`build_features`, "
            "Ibis on DuckDB); peers = RFM + monetary value only. Each implementation first "
            f"runs once on the first {WARMUP_ROWS:,} rows (the warm-up column: imports, "
            "query compilation), then the timed call runs on the whole log. Timeout per "
            f"call: {sp['timeout_seconds']} s.", "",
        ]
        rows = []
        for n, e in sp["sizes"].items():
            for impl in ("ours", "lifetimes", "pymc_marketing"):
                r = e[impl]
                speed = e.get(f"speedup_vs_{impl}") if impl != "ours" else None
                same = e.get(f"same_rfm_as_{impl}") if impl != "ours" else None
                rows.append([int(n), impl, r.get("status"), r.get("seconds"),
                             r.get("warmup_seconds"), r.get("rows_per_second"),
                             r.get("customers"), speed, same])
        lines += _table(["rows", "implementation", "status", "seconds", "warm-up s", "rows/s",
                         "customers", "ours x faster", "same RFM"], rows) + [""]
        for n in ("1000000", "10000000"):
            if n in sp["sizes"]:
                found = sp["sizes"][n].get("speedup_vs_lifetimes")
                met = isinstance(found, str) or (found is not None and found >= 10)
                lines.append(f"- Goal ours >= 10x lifetimes at {int(n):,} rows: "
                             f"{_fmt(found)}x, {'met' if met else 'NOT met'}.")
        lines.append("")
    else:
        lines += [f"Not run. {errors.get('speed', '')}", ""]

    e2e = results.get("e2e")
    lines += ["## End to end (training job on generated logs)", ""]
    if e2e:
        lines += _provenance_line(results, "e2e")
        lines += [
            f"`python -m clv_training.jobs.train data=csv data.path=<log.parquet> "
            f"tuning.n_trials={e2e['n_trials']}` in a subprocess under `/usr/bin/time -v` "
            "(peak memory = maximum resident set size of the job process), temporary MLflow "
            f"store. Timeout {e2e['timeout_seconds']} s. Goal: 10^7 rows in under 600 s and "
            "8 GiB. The job runs with the defaults of `conf/` at the run's git commit, "
            "including the row caps for big logs (seeded samples of example rows: "
            "`tuning.max_train_rows` per Optuna trial, `models.<family>.max_train_rows` per "
            "ML fit, `churn.max_train_rows`; CDNOW stays below all of them).", "",
        ]
        rows = [[int(n), r["status"], r.get("wall_seconds"), r.get("max_rss_gib"),
                 r.get("user_seconds"), r.get("winner")] for n, r in e2e["sizes"].items()]
        lines += _table(["rows", "status", "wall s", "peak RSS GiB", "user CPU s", "winner"],
                        rows) + [""]
        lines += [f"Growth exponent (log-log slope) of time: {_fmt(e2e['time_exponent'])}, of "
                  f"memory: {_fmt(e2e['memory_exponent'])}.", ""]
        if e2e.get("provenance"):
            lines += [f"Provenance: {e2e['provenance']}.", ""]
        big = e2e["sizes"].get("10000000")
        if big is not None:
            met = (big["status"] == "ok" and big["wall_seconds"] < 600
                   and (big.get("max_rss_gib") or 0) < 8)
            lines += [f"- Goal 10^7 rows in < 600 s and < 8 GiB: {'met' if met else 'NOT met'}"
                      f" ({big['status']}, {_fmt(big.get('wall_seconds'))} s, "
                      f"{_fmt(big.get('max_rss_gib'))} GiB).", ""]
        for n, r in e2e["sizes"].items():
            if r["status"] != "ok":
                lines += [f"{n} rows {r['status']}:", "", "```", r.get("reason", ""), "```",
                          ""]
    else:
        lines += [f"Not run. {errors.get('e2e', '')}", ""]

    sv = results.get("serving")
    lines += ["## Serving", ""]
    if sv:
        lines += _provenance_line(results, "serving")
        lines += [f"`{sv['command']}` on the quality run's champion; JSON `dataframe_split` "
                  "with customer_id, timestamp, amount (all rows of the chosen customers). "
                  "One-customer requests draw a new random customer for every request; "
                  "rows/request is the mean number of rows sent.", ""]
        rows = [[int(n), r["status"], r.get("requests"), r.get("rows_per_request"),
                 r.get("customers_per_second"), r.get("p50_ms"), r.get("p99_ms"),
                 r.get("mean_ms")] for n, r in sv["requests"].items()]
        lines += _table(["customers/request", "status", "requests", "rows/request",
                         "customers/s", "p50 ms", "p99 ms", "mean ms"], rows) + [""]
        if sv.get("provenance"):
            lines += [f"Provenance: {sv['provenance']}.", ""]
        for n, r in sv["requests"].items():
            if r["status"] != "ok":
                lines += [f"Requests of {n} customer(s) were refused ({r['status']}):", "",
                          "```", str(r.get("error", r.get("errors"))), "```", ""]
            elif r.get("failed_requests"):
                lines += [f"Requests of {n} customer(s) that failed (HTTP status: count), "
                          f"left out of the latency figures: {r['failed_requests']}.", ""]
    else:
        lines += [f"Not run. {errors.get('serving', '')}", ""]
    lines += _scale_md(results.get("scale"), results, errors.get("scale", ""))
    lines += _spark_md(results.get("spark"), results, errors.get("spark", ""))
    return "\n".join(lines) + "\n"


def _gib(value: Any) -> float | None:
    return None if value is None else float(value) / 2**30


def _bytes(value: Any) -> str:
    """Bytes as GiB (or MiB below 1 GiB)."""
    if value is None:
        return "-"
    if value < 2**30:
        return f"{_fmt(float(value) / 2**20, 3)} MiB"
    return f"{_fmt(float(value) / 2**30, 3)} GiB"


def _scale_md(sc: dict[str, Any] | None, results: dict[str, Any], error: str) -> list[str]:
    lines = ["## Scale: features out of core on DuckDB", ""]
    if not sc:
        return lines + [f"Not run. {error}", ""]
    lines += _provenance_line(results, "scale")
    lines += [
        "A generated log (seed 42, written in chunks of whole customers by "
        "`generator.write_rows_parquet`, one Parquet file) is read by `DuckDBEngine` "
        "(`engine.read_parquet`, never loaded into pandas) in a fresh process under "
        "`/usr/bin/time -v`; the full feature set at the log's last day is written to "
        "Parquet (`engine.to_parquet`). `seconds` is the feature query alone (read, "
        "aggregate, sort, write); `process s` adds start-up, imports and a first scan for "
        "the cutoff. Peak RSS is the whole process's; DuckDB's `memory_limit` caps its "
        "buffer manager, not the process. Spill = the largest size of DuckDB's temporary "
        "folder, polled every 0.2 s (a lower bound). Timeout per process: "
        f"{sc['timeout_seconds']} s.", "",
        "Goal (#5): 10^8 transactions through feature building without running out of "
        "memory: the run finishes (status ok) under each memory limit. `RSS <= limit` "
        "says in addition whether the whole process stayed below the limit.", "",
    ]
    rows = []
    for n, entry in sc["sizes"].items():
        for limit, r in entry.get("runs", {}).items():
            rows.append([int(n), limit, r.get("status"), r.get("seconds"),
                         r.get("rows_per_second"), r.get("max_rss_gib"),
                         r.get("rss_within_limit"), _gib(r.get("spill_peak_bytes")),
                         r.get("customers"), r.get("process_wall_seconds")])
    lines += _table(["rows", "memory limit", "status", "seconds", "rows/s", "peak RSS GiB",
                     "RSS <= limit", "spill peak GiB", "customers", "process s"], rows)
    lines.append("")
    for n, entry in sc["sizes"].items():
        g = entry.get("generator")
        if g:
            lines.append(
                f"- {int(n):,} rows: the log has {_fmt(g.get('rows'))} rows of "
                f"{_fmt(g.get('customers'))} customers in {_fmt(g.get('chunks'))} chunk(s), "
                f"{_bytes(g.get('bytes'))} of Parquet, written in "
                f"{_fmt(g.get('seconds'))} s at {_fmt(g.get('max_rss_gib'))} GiB peak RSS. "
                f"Disk: {_bytes(entry.get('disk_free_bytes_before'))} free before, "
                f"about {_bytes(entry.get('disk_needed_bytes_estimate'))} needed "
                "(log + spill + output), all removed afterwards.")
        if entry.get("status") == "skipped":
            lines.append(f"- {int(n):,} rows skipped: {entry.get('error')}")
        for limit, r in entry.get("runs", {}).items():
            out = r.get("output_bytes")
            if r.get("status") == "ok" and int(n) >= 10**8:
                rss, cap = r.get("max_rss_gib"), _gib(r.get("memory_limit_bytes"))
                side = ("below" if r.get("rss_within_limit") else "ABOVE")
                lines.append(
                    f"- Goal 10^8 rows with memory_limit={limit}: met, no out-of-memory "
                    f"({_fmt(r['seconds'])} s, {_bytes(r.get('spill_peak_bytes'))} "
                    f"spilled). The whole process peaked at {_fmt(rss)} GiB RSS, {side} the "
                    f"limit's {_fmt(cap)} GiB.")
            elif int(n) >= 10**8:
                lines.append(f"- Goal 10^8 rows with memory_limit={limit}: NOT met "
                             f"({r.get('status')}).")
            if out:
                lines.append(f"- {int(n):,} rows at {limit}: features file "
                             f"{_bytes(out)}, {_fmt(r.get('feature_columns'))} "
                             f"feature columns, {_fmt(r.get('threads'))} DuckDB threads.")
            if r.get("status") != "ok":
                lines += ["", f"{int(n):,} rows at {limit} {r.get('status')}:", "", "```",
                          str(r.get("error", "")), "```"]
    return lines + [""]


def _spark_md(spk: dict[str, Any] | None, results: dict[str, Any], error: str) -> list[str]:
    lines = ["## Spark local mode", ""]
    if not spk:
        return lines + [f"Not run. {error}", ""]
    lines += _provenance_line(results, "spark")
    lines += [
        "The same feature expressions on `SparkEngine` (Ibis PySpark backend) in a fresh "
        "process, on a generated log (seed 42, chunked writer). In order: session start-up; "
        "pandas frame -> Spark (`engine.table` + a count, so the rows have moved); the "
        "features from it, cold (first query of the session) and again warm; the Parquet "
        "file read by Spark (`engine.read_parquet` + a count); the features from it; then "
        "DuckDB on the same pandas frame, and the frames compared exactly. rows/s is for "
        "the warm run. No goal: the figure is what #7 asks for.", "",
    ]
    rows = []
    for n, r in spk["sizes"].items():
        rows.append([int(n), r.get("master"), r.get("status"), r.get("startup_seconds"),
                     r.get("frame_to_spark_seconds"), r.get("parquet_to_spark_seconds"),
                     r.get("features_seconds_cold"), r.get("features_seconds"),
                     r.get("rows_per_second"), r.get("features_from_parquet_seconds"),
                     r.get("duckdb_features_seconds"), r.get("identical_to_duckdb"),
                     r.get("max_abs_difference")])
    lines += _table(["rows", "master", "status", "start-up s", "pandas->Spark s",
                     "Parquet->Spark s", "features s (cold)", "features s (warm)", "rows/s",
                     "features from Parquet s", "DuckDB s", "identical to DuckDB",
                     "max abs diff"], rows)
    lines.append("")
    for n, r in spk["sizes"].items():
        if r.get("status") == "ok":
            lines.append(
                f"- {int(n):,} rows, {_fmt(r.get('customers'))} customers; features from "
                f"the Parquet file identical to DuckDB: "
                f"{_fmt(r.get('parquet_identical_to_duckdb'))} (max abs diff "
                f"{_fmt(r.get('parquet_max_abs_difference'))}); Spark {r.get('spark_version')}"
                f"; process {_fmt(r.get('process_wall_seconds'))} s.")
        else:
            lines += [f"{int(n):,} rows {r.get('status')}:", "", "```",
                      str(r.get("error", "")), "```"]
    return lines + [""]


def _uncommitted_src() -> list[str] | None:
    """Files under ``src/`` that differ from the commit (others edit the tree meanwhile)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [line[3:] for line in out.splitlines() if line.strip()]


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def load_results(path: Path) -> dict[str, Any]:
    """An earlier results file, with per-section provenance (filled in for old files).

    A file written before sections carried their own provenance came from one run: its
    top-level date, command and git commit are given to each section it holds.
    """
    if not path.exists():
        return {}
    found = json.loads(path.read_text())
    provenance = found.setdefault("provenance", {})
    legacy = {"date": found.get("date"), "command": found.get("command"),
              "git_commit": found.get("git_commit")}
    for section in SECTIONS:
        if section in found and section not in provenance:
            provenance[section] = dict(legacy)
    if not found.get("runs") and provenance:
        found["runs"] = [{**legacy, "sections": [s for s in SECTIONS if s in found],
                          "total_seconds": found.get("total_seconds"),
                          "machine": found.get("machine")}]
    return found


def merge_results(old: dict[str, Any], new: dict[str, Any], ran: list[str]) -> dict[str, Any]:
    """``old`` with the sections in ``ran`` replaced by ``new``'s (pure: no file access).

    Sections that did not run keep their results, provenance and errors; the top-level
    date, command, commit and machine become the new run's; ``runs`` lists every run whose
    sections are still in the file.
    """
    merged = {k: v for k, v in old.items() if k not in ran}
    for section in ran:
        if section in new:
            merged[section] = new[section]
    for key in ("size", "date", "command", "git_commit", "machine", "total_seconds"):
        merged[key] = new[key]
    merged["settings"] = {**old.get("settings", {}), **new.get("settings", {})}
    errors = {k: v for k, v in old.get("errors", {}).items() if k not in ran}
    merged["errors"] = {**errors, **new.get("errors", {})}
    provenance = {k: v for k, v in old.get("provenance", {}).items() if k not in ran}
    provenance.update(new.get("provenance", {}))
    merged["provenance"] = provenance
    # A note about a run ("... (run of <date>) ...") goes once none of its sections is left.
    live = {p.get("date") for p in provenance.values()}
    notes = list(dict.fromkeys(old.get("notes", []) + new.get("notes", [])))
    merged["notes"] = [
        n for n in notes
        if not (found := re.search(r"run of ([^\s)]+)", n)) or found.group(1) in live
    ]
    runs = [r for r in old.get("runs", []) if any(
        provenance.get(s, {}).get("date") == r.get("date") for s in r.get("sections", []))]
    merged["runs"] = runs + new.get("runs", [])
    return merged


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the chosen sections and merge them into the results files.

    Sections that did not run keep the figures (and provenance) of the run that made
    them; ``--fresh`` starts from an empty file instead.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="quick")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--out-dir", default=str(ROOT / "bench"))
    parser.add_argument("--keep-tmp", action="store_true")
    parser.add_argument("--fresh", action="store_true",
                        help="do not keep the sections of the existing results file")
    parser.add_argument("--tmp-dir", default=None,
                        help="parent folder of the temporary folder (default: the system's)")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite RESULTS*.md from the existing results*.json; no runs")
    args = parser.parse_args(argv)
    suffix = "" if args.size == "full" else f"-{args.size}"
    out_dir = Path(args.out_dir)
    if args.render_only:
        found = load_results(out_dir / f"results{suffix}.json")
        q = found.get("quality")
        if q:  # goal checks are derived from the tables: recompute with the current rule
            q["temporal_goal"] = goals(q["temporal"], q["champion"])
            q["customer_split_goal"] = goals(q["customer_split"]["table"], q["champion"])
        _write(found, out_dir, suffix)
        return found
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    size = SIZES[args.size]
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    old = {} if args.fresh else load_results(out_dir / f"results{suffix}.json")
    if old.get("size", args.size) != args.size:
        raise ValueError(f"{out_dir}/results{suffix}.json holds size {old['size']!r}")
    tmp = Path(tempfile.mkdtemp(prefix=f"clv-bench-{args.size}-", dir=args.tmp_dir))
    started = time.perf_counter()
    command = "make bench" if args.size == "full" else "make bench-quick"
    if argv is not None or sys.argv[1:] != ["--size", args.size]:
        command += f"  (python -m clv_training.bench.run {shlex.join(sys.argv[1:])})"
    date = dt.datetime.now().isoformat(timespec="seconds")
    commit, dirty = _git_commit(), _uncommitted_src()
    run_info = {"date": date, "command": command, "git_commit": commit,
                "sections": sections, "load_average_at_start": list(os.getloadavg())}
    results: dict[str, Any] = {
        "size": args.size, "date": date, "command": command, "git_commit": commit,
        "machine": machine_info(), "settings": size, "errors": {}, "provenance": {},
        "runs": [run_info],
    }
    run_info["machine"] = results["machine"]
    store, tx = None, None
    try:
        for section in sections:
            logger.info("bench section %s", section)
            section_started = time.perf_counter()
            try:
                if section == "quality":
                    found = bench_quality(size, tmp)
                    store, tx = Path(found.pop("_store")), found.pop("_transactions")
                    results["quality"] = found
                elif section == "speed":
                    results["speed"] = bench_speed(size["speed_rows"], tmp,
                                                   size["speed_timeout"])
                elif section == "e2e":
                    results["e2e"] = bench_e2e(size["e2e_rows"], tmp, size["e2e_trials"],
                                               size["e2e_timeout"])
                elif section == "serving":
                    if store is None:
                        raise RuntimeError("serving needs the quality section's store")
                    results["serving"] = bench_serving(store, tx, size["serve_customers"],
                                                       size["serve_single_requests"], tmp)
                elif section == "scale":
                    results["scale"] = bench_scale(size["scale_rows"],
                                                   size["scale_memory_limits"], tmp,
                                                   size["scale_timeout"])
                elif section == "spark":
                    results["spark"] = bench_spark(size["spark_rows"], tmp,
                                                   size["spark_timeout"])
            except Exception as error:  # noqa: BLE001 - one section failing is recorded
                logger.exception("section %s failed", section)
                results["errors"][section] = f"{type(error).__name__}: {error}"
            results["provenance"][section] = {
                "date": date, "command": command, "git_commit": commit,
                "git_commit_at_end": _git_commit(), "uncommitted_src_at_start": dirty,
                "seconds": time.perf_counter() - section_started,
            }
            results["total_seconds"] = run_info["total_seconds"] = (
                time.perf_counter() - started)
            _write(merge_results(old, results, sections[: sections.index(section) + 1]),
                   out_dir, suffix)
    finally:
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            logger.info("kept %s", tmp)
    return merge_results(old, results, sections)


def _write_json(results: dict[str, Any], out_dir: Path, suffix: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"results{suffix}.json").write_text(
        json.dumps(_finite(results), indent=2, default=_json_default) + "\n")


def _write(results: dict[str, Any], out_dir: Path, suffix: str) -> None:
    _write_json(results, out_dir, suffix)
    (out_dir / f"RESULTS{suffix}.md").write_text(render_markdown(results))


def _finite(value: Any) -> Any:
    """NaN and infinities become null, so the JSON file is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.bool_):
        return bool(value)
    return str(value)


if __name__ == "__main__":
    main()
