"""Engines that run the feature expressions of :mod:`clv_training.features.expr`.

``features.engine`` picks one (``make train ARGS='engine=spark'`` selects the Spark preset
in ``conf/engine/``):

- ``duckdb`` (default): embedded DuckDB, in memory, with ``features.duckdb_memory_limit``
  and a spill folder (``features.duckdb_temp_directory``), so logs larger than memory
  finish instead of failing.
- ``spark``: a Spark session (local mode by default, ``features.spark_master``), through
  Ibis's PySpark backend. It needs the optional pins of ``requirements-spark.txt``
  (``make install-spark``) and Java 17.

Both take pandas frames or Parquet files in and give pandas frames out; the expressions in
between are the same objects.

Classes
-------
FeatureEngine
    The interface: ``table``, ``read_parquet``, ``to_pandas``, ``close``.
DuckDBEngine, SparkEngine
    The two engines.

Functions
---------
open_engine
    The engine named by a :class:`~clv_training.config.FeaturesConfig`.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import duckdb
import ibis
import pandas as pd
import pyarrow as pa
from ibis.expr.types import Table

from clv_training.config import FeaturesConfig

logger = logging.getLogger(__name__)

ENGINES = ("duckdb", "spark")


def connect_duckdb(cfg: FeaturesConfig) -> duckdb.DuckDBPyConnection:
    """Open a fresh in-memory DuckDB connection with the configured limits.

    Parameters
    ----------
    cfg : FeaturesConfig
        ``duckdb_memory_limit`` and ``duckdb_temp_directory`` (the spill folder) are
        applied when set.

    Returns
    -------
    duckdb.DuckDBPyConnection
        A connection the caller closes.
    """
    config: dict[str, str] = {}
    if cfg.duckdb_memory_limit:
        config["memory_limit"] = str(cfg.duckdb_memory_limit)
    if cfg.duckdb_temp_directory:
        config["temp_directory"] = str(cfg.duckdb_temp_directory)
    return duckdb.connect(database=":memory:", config=config)


class FeatureEngine:
    """Where feature expressions run. Use as a context manager, or call :meth:`close`."""

    name = "base"
    backend: Any

    def table(self, frame: pd.DataFrame) -> Table:
        """Make ``frame`` a table of this engine (a view where the engine allows it)."""
        raise NotImplementedError

    def drop(self, table: Table) -> None:
        """Forget a table that :meth:`table` made (the frame is no longer referenced)."""

    def read_parquet(self, path: str | Path) -> Table:
        """A table over a Parquet file or folder, read by the engine (out of core)."""
        return self.backend.read_parquet(str(path))

    def to_pandas(self, expr: Table) -> pd.DataFrame:
        """Run ``expr`` and return its rows as a pandas frame."""
        return self.backend.to_pyarrow(expr).to_pandas()

    def run(self, make: Callable[[Table], Table], rows: Table, key: Hashable) -> pd.DataFrame:
        """Run ``make(rows)``; ``key`` names everything but ``rows`` that shapes the query.

        Engines may reuse the compiled query for the same ``key`` and schema of ``rows``.
        """
        return self.to_pandas(make(rows))

    def to_parquet(self, expr: Table, path: str | Path) -> Path:
        """Run ``expr`` and write its rows to a Parquet file (for outputs too big to hold)."""
        self.backend.to_parquet(expr, str(path))
        return Path(path)

    def close(self) -> None:
        """Release the engine's resources."""

    def __enter__(self) -> FeatureEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DuckDBEngine(FeatureEngine):
    """Embedded DuckDB. A connection passed in keeps its settings and stays open.

    Examples
    --------
    >>> frame = pd.DataFrame({"customer_id": ["a"], "amount": [1.5]})
    >>> with DuckDBEngine(FeaturesConfig()) as engine:
    ...     engine.to_pandas(engine.table(frame)).amount.tolist()
    [1.5]
    """

    name = "duckdb"

    def __init__(
        self, cfg: FeaturesConfig, con: duckdb.DuckDBPyConnection | None = None
    ) -> None:
        self._own = con is None
        self.con = connect_duckdb(cfg) if con is None else con
        self.backend = ibis.duckdb.from_connection(self.con)
        self._views: list[str] = []

    def table(self, frame: pd.DataFrame) -> Table:
        name = f"clv_rows_{uuid.uuid4().hex}"
        self.con.register(name, frame)
        self._views.append(name)
        return self.backend.table(name)

    def run(self, make: Callable[[Table], Table], rows: Table, key: Hashable) -> pd.DataFrame:
        # Building and compiling the Ibis expression costs about 50 ms, more than running
        # it on a small request; the SQL is compiled once per key and schema, against a
        # placeholder table, and reused for any table of that schema.
        sql = _compiled_sql(make, rows.schema(), key)
        quoted = '"' + rows.get_name().replace('"', '""') + '"'
        return self.con.sql(sql.replace(_PLACEHOLDER_SQL, quoted)).to_arrow_table().to_pandas()

    def drop(self, table: Table) -> None:
        name = table.get_name()
        if name in self._views:
            self._views.remove(name)
            self.con.unregister(name)

    def close(self) -> None:
        for name in self._views:
            self.con.unregister(name)
        self._views.clear()
        if self._own:
            self.con.close()


_PLACEHOLDER = "clv_rows_placeholder_7f3c"
_PLACEHOLDER_SQL = f'"{_PLACEHOLDER}"'
_SQL_CACHE: dict[tuple[Hashable, Any], str] = {}
_SQL_CACHE_LOCK = threading.Lock()
_SQL_CACHE_SIZE = 256


def _compiled_sql(make: Callable[[Table], Table], schema: Any, key: Hashable) -> str:
    """DuckDB SQL of ``make`` over a placeholder table of ``schema``, cached by key."""
    cache_key = (key, schema)
    with _SQL_CACHE_LOCK:
        found = _SQL_CACHE.get(cache_key)
    if found is not None:
        return found
    sql = str(ibis.to_sql(make(ibis.table(schema, name=_PLACEHOLDER)), dialect="duckdb"))
    if sql.count(_PLACEHOLDER_SQL) != 1:  # pragma: no cover - guards an Ibis change
        raise RuntimeError(f"compiled feature SQL does not name {_PLACEHOLDER_SQL} once")
    with _SQL_CACHE_LOCK:
        if len(_SQL_CACHE) >= _SQL_CACHE_SIZE:
            _SQL_CACHE.clear()
        _SQL_CACHE[cache_key] = sql
    return sql


# Spark settings the engine always applies: arrow transfers, UTC (Ibis forces it anyway) and
# a driver that listens on loopback only, with no web UI.
_SPARK_DEFAULTS = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.session.timeZone": "UTC",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.driver.host": "127.0.0.1",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "8",
}


class SparkEngine(FeatureEngine):
    """A Spark session through Ibis's PySpark backend.

    Parameters
    ----------
    cfg : FeaturesConfig
        ``spark_master`` (e.g. ``local[2]``, or a cluster URL) and ``spark_conf`` (extra
        ``spark.*`` settings, applied after the defaults above).
    session : pyspark.sql.SparkSession, optional
        An existing session (a notebook's or a cluster's). By default the process's
        active session is reused, or one is started with the settings above.

    Notes
    -----
    Timestamps reach Spark naive, already converted to ``data.timezone`` by the data
    contract; the session runs in UTC, so a timestamp's calendar day is the same as on
    DuckDB.

    :meth:`close` drops the engine's views but leaves the session running, so the next
    engine in the same process reuses it instead of paying Spark's start-up (7-11 s here)
    again; :meth:`stop` ends it.
    """

    name = "spark"

    def __init__(self, cfg: FeaturesConfig, session: Any | None = None) -> None:
        # A local driver resolves its own address before any setting applies; pinned to
        # loopback, it neither reaches for another interface nor warns that it did.
        if str(cfg.spark_master).startswith("local"):
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        try:
            from pyspark.sql import SparkSession
        except ImportError as exc:  # pragma: no cover - depends on the optional pins
            raise ImportError(
                "features.engine=spark needs pyspark: run `make install-spark` (it installs "
                "requirements-spark.txt into .venv); Java 17 must be on PATH"
            ) from exc
        if session is None:
            builder = SparkSession.builder.appName("clv_training").master(cfg.spark_master)
            for key, value in {**_SPARK_DEFAULTS, **dict(cfg.spark_conf or {})}.items():
                builder = builder.config(key, str(value))
            session = builder.getOrCreate()
            session.sparkContext.setLogLevel("ERROR")
        self.session = session
        self.backend = ibis.pyspark.connect(session)
        self._views: list[str] = []
        logger.info("spark engine: master %s", session.sparkContext.master)

    def table(self, frame: pd.DataFrame) -> Table:
        name = f"clv_rows_{uuid.uuid4().hex}"
        # Limitation: the rows travel from the driver's pandas frame to Spark; a log that
        # already lives in a warehouse should be read with read_parquet (or a table of the
        # session) instead.
        from pyspark.sql.pandas.types import from_arrow_schema

        ready = _spark_ready(frame)
        # An explicit schema: Spark cannot infer one from an empty frame.
        schema = from_arrow_schema(pa.Schema.from_pandas(ready, preserve_index=False))
        rows = self.session.createDataFrame(ready, schema=schema)
        # Spread over the executors and cached: a train run queries the same rows at every
        # cutoff (measured at 10^6 rows on local[2]: 8 s per feature query, 15 s uncached).
        parts = 2 * int(self.session.sparkContext.defaultParallelism)
        rows.repartition(parts).cache().createOrReplaceTempView(name)
        self._views.append(name)
        return self.backend.table(name)

    def drop(self, table: Table) -> None:
        name = table.get_name()
        if name in self._views:
            self._views.remove(name)
            self._drop_view(name)

    def _drop_view(self, name: str) -> None:
        self.session.catalog.uncacheTable(name)
        self.session.catalog.dropTempView(name)

    def close(self) -> None:
        for name in self._views:
            self._drop_view(name)
        self._views.clear()

    def stop(self) -> None:
        """Close, then stop the Spark session (the next engine starts a new one)."""
        self.close()
        self.session.stop()


def _spark_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """Plain numpy/object dtypes, which every pyspark conversion path accepts."""
    ready = frame.copy()
    for column in ready.columns:
        if pd.api.types.is_string_dtype(ready[column].dtype):
            ready[column] = ready[column].astype(object)
        elif pd.api.types.is_datetime64_dtype(ready[column].dtype):
            ready[column] = ready[column].astype("datetime64[us]")
    return ready


def open_engine(
    cfg: FeaturesConfig, *, con: duckdb.DuckDBPyConnection | None = None
) -> FeatureEngine:
    """Open the engine that ``cfg.engine`` names.

    Parameters
    ----------
    cfg : FeaturesConfig
        ``engine`` is ``duckdb`` or ``spark``; the engine's own settings come from it too.
    con : duckdb.DuckDBPyConnection, optional
        For ``duckdb``: run on this connection instead of a fresh one.

    Returns
    -------
    FeatureEngine
        An open engine; the caller closes it.
    """
    name = engine_name(cfg)
    if name == "duckdb":
        return DuckDBEngine(cfg, con)
    if con is not None:
        raise ValueError(f"a DuckDB connection was given but features.engine={name!r}")
    return SparkEngine(cfg)


def engine_name(cfg: FeaturesConfig) -> str:
    """``cfg.engine``, checked: ``duckdb`` (also when empty) or ``spark``, any case.

    Examples
    --------
    >>> engine_name(FeaturesConfig(engine="Spark"))
    'spark'
    """
    given = getattr(cfg, "engine", None)
    name = str(given or "duckdb").strip().lower()
    if name not in ENGINES:
        raise ValueError(
            f"features.engine must be one of {list(ENGINES)} (or engine=spark), got {given!r}"
        )
    return name
