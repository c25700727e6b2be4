"""The chunked log writer, the scale and spark bench sections, merging and their report."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from clv_training.bench import generator, run, worker
from clv_training.config import FeaturesConfig
from clv_training.features.build import build_features


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _log_frame(path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    frame["customer_id"] = frame["customer_id"].astype(str)
    frame["timestamp"] = frame["timestamp"].astype("datetime64[ns]")
    return frame


def test_chunked_writer_unique_ids_row_count_and_same_bytes(tmp_path):
    a = generator.write_rows_parquet(5000, tmp_path / "a.parquet", seed=3, chunk_rows=1200)
    b = generator.write_rows_parquet(5000, tmp_path / "b.parquet", seed=3, chunk_rows=1200)
    c = generator.write_rows_parquet(5000, tmp_path / "c.parquet", seed=4, chunk_rows=1200)
    assert a["chunks"] == 5  # 4 x 1200 + 200
    frame = _log_frame(tmp_path / "a.parquet")
    assert len(frame) == a["rows"] and 4500 <= a["rows"] <= 5000
    # Ids: one per customer, unique across chunks, numbered 0..customers-1 in order.
    ids = frame["customer_id"].unique()
    assert len(ids) == a["customers"]
    assert sorted(ids) == [f"C{i:07d}" for i in range(a["customers"])]
    # Each chunk is one row group of whole customers, at most chunk_rows rows.
    meta = pq.ParquetFile(tmp_path / "a.parquet").metadata
    assert meta.num_row_groups == 5
    sizes = [meta.row_group(i).num_rows for i in range(5)]
    assert all(s <= 1200 for s in sizes[:4]) and sizes[4] <= 200
    groups = [set(pq.ParquetFile(tmp_path / "a.parquet").read_row_group(i)
                  .column("customer_id").to_pylist()) for i in range(5)]
    assert sum(len(g) for g in groups) == a["customers"]  # no customer in two chunks
    # Same seed -> the same file byte for byte; another seed -> another log.
    assert _sha(tmp_path / "a.parquet") == _sha(tmp_path / "b.parquet")
    assert a["bytes"] == b["bytes"]
    assert not _log_frame(tmp_path / "c.parquet")["amount"].equals(frame["amount"])
    assert _sha(tmp_path / "c.parquet") != _sha(tmp_path / "a.parquet")
    assert str(pq.read_schema(tmp_path / "a.parquet").field("timestamp").type) == (
        "timestamp[us]")


def test_chunked_writer_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="must be >= 1"):
        generator.write_rows_parquet(0, tmp_path / "x.parquet")


def test_duckdb_worker_writes_the_features_build_features_gives(tmp_path):
    path = tmp_path / "log.parquet"
    generator.write_rows_parquet(3000, path, seed=5, chunk_rows=1000)
    out = tmp_path / "features.parquet"
    found = worker.run_duckdb(str(path), "256MB", str(tmp_path / "spill"), str(out))
    assert found["status"] == "ok" and found["rows"] <= 3000
    assert found["memory_limit"] == "256MB" and found["spill_peak_bytes"] == 0
    frame = _log_frame(path)
    cutoff = frame["timestamp"].max().normalize()
    assert found["cutoff"] == str(cutoff.date())
    expected = build_features(frame, cutoff, FeaturesConfig(btyd_features=False))
    written = pd.read_parquet(out).set_index("customer_id")
    written.index = written.index.astype(str)
    written.index.name = "customer_id"
    assert found["customers"] == len(expected) == len(written)
    pd.testing.assert_frame_equal(written.sort_index()[expected.columns].astype(float),
                                  expected, check_exact=True)


def test_duckdb_worker_reports_oom_under_a_tiny_limit(tmp_path):
    path = tmp_path / "log.parquet"
    generator.write_rows_parquet(20_000, path, seed=1)
    found = worker.run_duckdb(str(path), "1MB", str(tmp_path / "spill"),
                              str(tmp_path / "f.parquet"))
    assert found["status"] == "oom"
    assert "Out of Memory" in found["error"]


def test_spill_watch_and_limits(tmp_path):
    with worker.SpillWatch(tmp_path, every=0.01) as watch:
        (tmp_path / "a.bin").write_bytes(b"x" * 1000)
        (tmp_path / "a.bin").unlink()
        (tmp_path / "b.bin").write_bytes(b"x" * 10)
    assert watch.peak_bytes >= 10
    assert run.limit_bytes("4GB") == 4 * 10**9
    assert run.limit_bytes("2GiB") == 2 * 2**30
    assert run.limit_bytes("512MB") == 512 * 10**6
    with pytest.raises(ValueError):
        run.limit_bytes("lots")


def test_worker_timeout_stops_the_process_group(tmp_path):
    found = run._run_worker(["generate", "--log", str(tmp_path / "x.parquet"),
                             "--rows", str(10**8)], tmp_path, "slow", timeout=0.5)
    assert found["status"] == "timeout"
    assert found["process_wall_seconds"] < 30


def _legacy(tmp_path):
    old = {
        "size": "quick", "date": "2026-01-01T00:00:00", "command": "make bench-quick",
        "git_commit": "a" * 40, "machine": run.machine_info(), "total_seconds": 10.0,
        "settings": {"speed_rows": [1000]}, "errors": {"scale": "old failure"},
        "speed": {"timeout_seconds": 5, "sizes": {}},
    }
    path = tmp_path / "results-quick.json"
    path.write_text(json.dumps(old))
    return path


def test_merge_keeps_sections_that_did_not_run(tmp_path):
    old = run.load_results(_legacy(tmp_path))
    assert old["provenance"]["speed"]["git_commit"] == "a" * 40
    new = {"size": "quick", "date": "2026-02-02T00:00:00", "command": "x",
           "git_commit": "b" * 40, "machine": old["machine"], "total_seconds": 3.0,
           "settings": {"scale_rows": [2000]}, "errors": {},
           "provenance": {"scale": {"date": "2026-02-02T00:00:00", "git_commit": "b" * 40,
                                    "command": "x", "seconds": 3.0}},
           "runs": [{"date": "2026-02-02T00:00:00", "sections": ["scale"]}],
           "scale": {"sizes": {}}}
    merged = run.merge_results(old, new, ["scale"])
    assert merged["speed"] == {"timeout_seconds": 5, "sizes": {}}
    assert merged["provenance"]["speed"]["date"] == "2026-01-01T00:00:00"
    assert merged["provenance"]["scale"]["git_commit"] == "b" * 40
    assert "scale" not in merged["errors"]  # the old failure was replaced by this run
    assert merged["settings"] == {"speed_rows": [1000], "scale_rows": [2000]}
    assert [r["date"] for r in merged["runs"]] == ["2026-01-01T00:00:00",
                                                   "2026-02-02T00:00:00"]
    assert merged["git_commit"] == "b" * 40
    # Re-running speed too drops the first run from the list (nothing of it is left).
    again = run.merge_results(merged, {**new, "speed": {"sizes": {"1": {}}},
                                       "runs": [{"date": "3", "sections": ["speed"]}],
                                       "provenance": {"speed": {"date": "3"}}}, ["speed"])
    assert [r["date"] for r in again["runs"]] == ["2026-02-02T00:00:00", "3"]


def test_main_scale_section_tiny_merges_into_the_file(tmp_path, monkeypatch):
    _legacy(tmp_path)
    tiny = {**run.SIZES["quick"], "scale_rows": [2000], "scale_memory_limits": ["256MB"],
            "scale_timeout": 300}
    monkeypatch.setitem(run.SIZES, "quick", tiny)
    run.main(["--size", "quick", "--sections", "scale", "--out-dir", str(tmp_path),
              "--tmp-dir", str(tmp_path)])
    found = json.loads((tmp_path / "results-quick.json").read_text())
    assert found["speed"] == {"timeout_seconds": 5, "sizes": {}}
    assert found["provenance"]["speed"]["git_commit"] == "a" * 40
    assert found["provenance"]["scale"]["git_commit"] == run._git_commit()
    entry = found["scale"]["sizes"]["2000"]
    r = entry["runs"]["256MB"]
    assert r["status"] == "ok", r
    assert 0 < r["rows"] <= 2000 and r["customers"] > 100
    assert r["max_rss_gib"] > 0 and r["seconds"] > 0 and r["rows_per_second"] > 0
    assert r["memory_limit_bytes"] == 256 * 10**6 and r["spill_left_bytes"] == 0
    assert entry["generator"]["rows"] == r["rows"] and entry["generator"]["max_rss_gib"] > 0
    # Only the results files stay: the log, spill and features are gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS-quick.md",
                                                          "results-quick.json"]
    text = (tmp_path / "RESULTS-quick.md").read_text()
    assert "## Scale: features out of core on DuckDB" in text
    assert "| 2,000 | 256MB | ok |" in text  # the size's target rows, then the limit
    assert "at commit `aaaaaaaaaaaa`: `make bench-quick`" in text  # speed's own run


def test_render_markdown_shows_new_tables_and_each_provenance():
    ok = {"status": "ok", "seconds": 41.8, "rows_per_second": 2.39e6, "max_rss_gib": 3.1,
          "rss_within_limit": True, "spill_peak_bytes": 2**31, "customers": 13_400_000,
          "process_wall_seconds": 50.0, "output_bytes": 2**30, "feature_columns": 20,
          "threads": 2, "memory_limit_bytes": 4 * 10**9}
    results = {
        "size": "full", "date": "2026-02-02", "command": "make bench", "git_commit": "b" * 40,
        "machine": run.machine_info(), "errors": {}, "total_seconds": 1.0,
        "provenance": {
            "speed": {"date": "2026-01-01", "git_commit": "a" * 40, "command": "old"},
            "scale": {"date": "2026-02-02", "git_commit": "b" * 40, "command": "make bench"},
            "spark": {"date": "2026-02-02", "git_commit": "b" * 40, "command": "make bench"},
        },
        "speed": {"timeout_seconds": 5, "sizes": {}},
        "scale": {"timeout_seconds": 1800, "sizes": {"100000000": {
            "generator": {"rows": 99_999_990, "customers": 13_400_000, "chunks": 20,
                          "bytes": 2**30, "seconds": 120.0, "max_rss_gib": 1.2},
            "runs": {"4GB": ok, "2GB": {"status": "oom", "error": "Out of Memory Error"}}}}},
        "spark": {"timeout_seconds": 600, "sizes": {"1000000": {
            "status": "ok", "master": "local[2]", "startup_seconds": 9.0,
            "frame_to_spark_seconds": 12.0, "parquet_to_spark_seconds": 3.0,
            "features_seconds_cold": 20.0, "features_seconds": 10.0,
            "rows_per_second": 1e5, "features_from_parquet_seconds": 9.0,
            "duckdb_features_seconds": 0.5, "identical_to_duckdb": True,
            "max_abs_difference": 0.0, "customers": 134_000}}},
    }
    text = run.render_markdown(results)
    assert "| 100,000,000 | 4GB | ok | 41.8 |" in text
    assert "| 100,000,000 | 2GB | oom |" in text
    assert "Goal 10^8 rows with memory_limit=4GB: met, no out-of-memory" in text
    assert "peaked at 3.1 GiB RSS, below the limit's 3.725 GiB" in text
    assert "Goal 10^8 rows with memory_limit=2GB: NOT met (oom)" in text
    assert "| 1,000,000 | local[2] | ok | 9 | 12 | 3 | 20 | 10 |" in text
    assert "| yes | 0 |" in text  # identical, max abs diff 0
    assert "at commit `aaaaaaaaaaaa`: `old`" in text  # speed keeps its own run
    assert text.count("at commit `bbbbbbbbbbbb`: `make bench`") == 2
    assert "Sections come from different commits" in text
    assert "## End to end" in text and "Not run." in text


@pytest.mark.slow
def test_spark_section_tiny_is_identical_to_duckdb(tmp_path):
    pytest.importorskip("pyspark")
    out = run.bench_spark(2000, tmp_path, timeout=600)
    r = out["sizes"]["2000"]
    assert r["status"] == "ok", r
    assert r["identical_to_duckdb"] is True and r["max_abs_difference"] == 0.0
    assert r["parquet_identical_to_duckdb"] is True and r["warm_run_identical"] is True
    assert r["startup_seconds"] > 0 and r["frame_to_spark_seconds"] > 0
    assert r["rows"] == out["generator"]["rows"] and r["customers"] > 100


def test_merge_drops_notes_of_runs_with_no_section_left():
    old = {"provenance": {"speed": {"date": "d1"}, "scale": {"date": "d1"}},
           "runs": [{"date": "d1", "sections": ["speed", "scale"]}],
           "notes": ["speed (run of d1): noisy", "scale (run of d1 at abc) moved", "a note about no run"], "speed": {}}
    new = {"size": "full", "date": "d2", "command": "c", "git_commit": "g", "machine": {},
           "total_seconds": 1.0, "provenance": {"speed": {"date": "d2"}},
           "runs": [{"date": "d2", "sections": ["speed"]}], "notes": [], "speed": {}}
    kept = run.merge_results(old, new, ["speed"])
    assert kept["notes"] == [
        "speed (run of d1): noisy", "scale (run of d1 at abc) moved", "a note about no run"
    ]
    new_scale = {**new, "provenance": {"scale": {"date": "d2"}}}
    both = run.merge_results(kept, new_scale, ["scale"])
    assert both["notes"] == ["a note about no run"]
