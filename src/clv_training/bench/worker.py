"""One measurement per fresh process, for the ``scale`` and ``spark`` bench sections.

:mod:`clv_training.bench.run` starts ``python -m clv_training.bench.worker <task> ...``
under ``/usr/bin/time -v`` so that peak memory (maximum resident set size) belongs to the
measurement alone. Each task writes its figures as JSON to ``--result``.

Tasks
-----
generate
    :func:`clv_training.bench.generator.write_rows_parquet` (chunked, out of core).
duckdb
    The full feature set at the log's last day on :class:`DuckDBEngine` reading the
    Parquet file, under a memory limit, written to Parquet (never pulled into pandas).
spark
    The same features on a local :class:`SparkEngine`, from the pandas frame and from the
    Parquet file, with a parity check against DuckDB on the same rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: Seconds between two looks at the spill folder's size.
SPILL_POLL_SECONDS = 0.2


def folder_bytes(folder: str | Path) -> int:
    """Total size of the files under ``folder`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:  # a spill file removed while we looked
                pass
    return total


class SpillWatch:
    """Largest size the spill folder reaches while the block runs (polled in a thread).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder, SpillWatch(folder) as watch:
    ...     _ = Path(folder, "spill.bin").write_bytes(b"x" * 10)
    >>> watch.peak_bytes
    10
    """

    def __init__(self, folder: str | Path, every: float = SPILL_POLL_SECONDS) -> None:
        self.folder, self.every = Path(folder), float(every)
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, folder_bytes(self.folder))
            self._stop.wait(self.every)

    def __enter__(self) -> SpillWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        # Limitation: a spill file written and removed between two polls is missed, so
        # the peak is a lower bound.
        self.peak_bytes = max(self.peak_bytes, folder_bytes(self.folder))


def _classify(error: BaseException) -> str:
    """``oom`` for DuckDB's (or Python's) out-of-memory errors, else ``error``."""
    text = f"{type(error).__name__}: {error}".lower()
    if isinstance(error, MemoryError) or "outofmemory" in text or "out of memory" in text:
        return "oom"
    return "error"


def run_generate(n_rows: int, path: str, seed: int, chunk_rows: int) -> dict[str, Any]:
    """Write the chunked log; seconds and the file's figures."""
    from clv_training.bench import generator

    started = time.perf_counter()
    found = generator.write_rows_parquet(n_rows, path, seed=seed, chunk_rows=chunk_rows)
    return {"status": "ok", "seconds": time.perf_counter() - started, **found}


def run_duckdb(log: str, memory_limit: str, spill_dir: str, out: str) -> dict[str, Any]:
    """Full features at the last day of ``log`` on DuckDB under ``memory_limit``.

    The cutoff (the last day of the log) is found by one DuckDB query over the file,
    timed apart; the feature query reads the file, aggregates, sorts by customer and writes
    ``out`` (Parquet) without pulling the result into Python.
    """
    from clv_training.config import FeaturesConfig
    from clv_training.features import expr
    from clv_training.features.engine import DuckDBEngine

    Path(spill_dir).mkdir(parents=True, exist_ok=True)
    cfg = FeaturesConfig(btyd_features=False, duckdb_memory_limit=memory_limit,
                         duckdb_temp_directory=spill_dir)
    entry: dict[str, Any] = {"memory_limit": memory_limit, "spill_dir": spill_dir}
    with DuckDBEngine(cfg) as engine:
        entry["threads"] = int(
            engine.con.execute("SELECT current_setting('threads')").fetchone()[0])
        entry["duckdb_memory_limit_setting"] = engine.con.execute(
            "SELECT current_setting('memory_limit')").fetchone()[0]
        rows = engine.read_parquet(log)
        started = time.perf_counter()
        n_rows = int(engine.backend.execute(rows.count()))
        last = pd.Timestamp(engine.backend.execute(rows.timestamp.max()))
        entry["scan_seconds"] = time.perf_counter() - started
        cutoff = last.normalize()
        entry.update(rows=n_rows, cutoff=str(cutoff.date()))
        query = expr.features(rows, cutoff.date(), cfg)
        started = time.perf_counter()
        try:
            with SpillWatch(spill_dir) as watch:
                engine.to_parquet(query, out)
        except Exception as error:  # noqa: BLE001 - the failure is the measurement
            entry.update(status=_classify(error), error=f"{type(error).__name__}: {error}")
            entry["seconds"] = time.perf_counter() - started
            entry["spill_peak_bytes"] = watch.peak_bytes
            return entry
        seconds = time.perf_counter() - started
        entry["temporary_files_after"] = int(engine.con.execute(
            "SELECT count(*) FROM duckdb_temporary_files()").fetchone()[0])
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(out).metadata
    entry.update(
        status="ok", seconds=seconds, rows_per_second=n_rows / seconds,
        customers=int(meta.num_rows), feature_columns=int(meta.num_columns) - 1,
        output_bytes=Path(out).stat().st_size, spill_peak_bytes=watch.peak_bytes,
    )
    return entry


def _max_abs_difference(a: pd.DataFrame, b: pd.DataFrame) -> float | None:
    """Largest absolute difference of two feature frames (None if their shapes differ)."""
    if a.shape != b.shape or not a.index.equals(b.index) or list(a.columns) != list(b.columns):
        return None
    return float(np.nanmax(np.abs(a.to_numpy(float) - b.to_numpy(float)), initial=0.0))


def _identical(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    try:
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    except AssertionError:
        return False
    return True


def run_spark(log: str, master: str) -> dict[str, Any]:
    """Spark local-mode features on ``log``: start-up, transfer, features and parity.

    Order: read the log into pandas (untimed, as the speed section does); start the
    session; move the frame to Spark (``engine.table`` plus a count, so the rows are
    really there); features from it, twice (cold, then warm); read the Parquet file with
    Spark (``engine.read_parquet`` plus a count); features from it; DuckDB on the same
    frame; compare.
    """
    from clv_training.config import FeaturesConfig
    from clv_training.features.build import build_features, select_rows
    from clv_training.features.engine import SparkEngine

    frame = pd.read_parquet(log)
    frame["customer_id"] = frame["customer_id"].astype(str)
    frame["timestamp"] = frame["timestamp"].astype("datetime64[ns]")
    cutoff = frame["timestamp"].max().normalize()
    n_rows = int(len(frame))
    cfg = FeaturesConfig(btyd_features=False, engine="spark", spark_master=master)
    entry: dict[str, Any] = {"rows": n_rows, "cutoff": str(cutoff.date()), "master": master}

    started = time.perf_counter()
    engine = SparkEngine(cfg)
    entry["startup_seconds"] = time.perf_counter() - started
    try:
        entry["spark_version"] = engine.session.version
        started = time.perf_counter()
        from_frame = engine.table(select_rows(frame))
        counted = int(engine.backend.execute(from_frame.count()))
        entry["frame_to_spark_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        on_frame = build_features(from_frame, cutoff, cfg, engine=engine)
        entry["features_seconds_cold"] = time.perf_counter() - started
        started = time.perf_counter()
        on_frame_again = build_features(from_frame, cutoff, cfg, engine=engine)
        entry["features_seconds"] = time.perf_counter() - started

        started = time.perf_counter()
        from_file = engine.read_parquet(log)
        counted_file = int(engine.backend.execute(from_file.count()))
        entry["parquet_to_spark_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        on_file = build_features(from_file, cutoff, cfg, engine=engine)
        entry["features_from_parquet_seconds"] = time.perf_counter() - started
    finally:
        started = time.perf_counter()
        engine.close()
        entry["stop_seconds"] = time.perf_counter() - started
    if counted != n_rows or counted_file != n_rows:
        raise RuntimeError(f"Spark counted {counted} / {counted_file} rows, pandas {n_rows}")

    started = time.perf_counter()
    on_duckdb = build_features(frame, cutoff, FeaturesConfig(btyd_features=False))
    entry["duckdb_features_seconds"] = time.perf_counter() - started
    entry.update(
        status="ok",
        customers=int(len(on_frame)),
        rows_per_second=n_rows / entry["features_seconds"],
        rows_per_second_cold=n_rows / entry["features_seconds_cold"],
        identical_to_duckdb=_identical(on_frame, on_duckdb),
        max_abs_difference=_max_abs_difference(on_frame, on_duckdb),
        parquet_identical_to_duckdb=_identical(on_file, on_duckdb),
        parquet_max_abs_difference=_max_abs_difference(on_file, on_duckdb),
        warm_run_identical=_identical(on_frame_again, on_frame),
    )
    return entry


def main(argv: list[str] | None = None) -> int:
    """Run one task and write its JSON result; the exit code is 0 even when the task's
    own status is a failure (oom, error), so the caller reads the status from the file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=["generate", "duckdb", "spark"])
    parser.add_argument("--result", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--rows", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-rows", type=int, default=5_000_000)
    parser.add_argument("--memory-limit", default="4GB")
    parser.add_argument("--spill-dir", default="")
    parser.add_argument("--out", default="")
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.task == "generate":
            found = run_generate(args.rows, args.log, args.seed, args.chunk_rows)
        elif args.task == "duckdb":
            found = run_duckdb(args.log, args.memory_limit, args.spill_dir, args.out)
        else:
            found = run_spark(args.log, args.master)
    except Exception as error:  # noqa: BLE001 - recorded for the report
        logger.exception("worker task %s failed", args.task)
        found = {"status": _classify(error), "error": f"{type(error).__name__}: {error}"}
    Path(args.result).write_text(json.dumps(found, indent=1, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a subprocess
    sys.exit(main())
