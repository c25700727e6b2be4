"""Customer features at a cutoff, one definition run by DuckDB or Spark.

A purchase occasion is a customer-day (the calendar day of ``timestamp``) and its amount is
that day's net sum. The definitions live in :mod:`clv_training.features.expr` as Ibis
expressions; :mod:`clv_training.features.engine` runs them on embedded DuckDB (default) or
on Spark (``features.engine=spark``). This module is the pandas-facing API the rest of the
package calls: frames (or engine tables) in, frames out.

Functions
---------
build_occasions
    Stage 1 alone: customer-days with their net amount.
build_features
    Features per customer at a cutoff (stage 1 and 2).
build_targets
    Spend and occasions per customer in ``(cutoff, cutoff + horizon]``.
feature_columns
    The fixed, ordered list of feature columns for a config.
connect_duckdb
    A fresh in-memory connection with the configured memory limit and spill folder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import duckdb
import numpy as np
import pandas as pd
from ibis.expr.types import Table

from clv_training.config import FeaturesConfig
from clv_training.data import AMOUNT, CUSTOMER_ID, TIMESTAMP
from clv_training.features import expr
from clv_training.features.engine import FeatureEngine, connect_duckdb, open_engine
from clv_training.features.expr import (
    DAY,
    N_ROWS,
    TARGET_OCCASIONS,
    TARGET_SPEND,
    feature_columns,
)

__all__ = [
    "DAY",
    "N_ROWS",
    "TARGET_OCCASIONS",
    "TARGET_SPEND",
    "Rows",
    "build_features",
    "build_occasions",
    "build_targets",
    "connect_duckdb",
    "feature_columns",
    "select_rows",
]

logger = logging.getLogger(__name__)

#: Transactions as a pandas frame, or as a table already on the engine (e.g. a Parquet file
#: read by :meth:`FeatureEngine.read_parquet`).
Rows = pd.DataFrame | Table

#: Optional hook for extra features (e.g. BG/NBD expected purchases and P(alive) when
#: ``features.btyd_features`` is on). It gets the base features (index ``customer_id``) and
#: the cutoff, and returns float columns on the same index; they are appended after the
#: base columns in the order it returns them.
ExtraFeatures = Callable[[pd.DataFrame, pd.Timestamp], pd.DataFrame]


def _as_day(value: pd.Timestamp | str, name: str) -> pd.Timestamp:
    """Return ``value`` as a naive, normalized :class:`pandas.Timestamp`."""
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        raise ValueError(f"{name} must be a naive date, got {ts!r}")
    return ts.normalize()


def select_rows(transactions: pd.DataFrame) -> pd.DataFrame:
    """Return the three columns the features need, checked, amounts rounded to 8 decimals.

    A log without an ``amount`` column is a frequency-only log: its counts and days are
    what they would be with amounts (``DATA_CASES.md`` 3) and every spend feature is 0.
    """
    missing = [c for c in (CUSTOMER_ID, TIMESTAMP) if c not in transactions.columns]
    if missing:
        raise ValueError(
            f"transactions lack column(s) {missing}; expected prepared transactions with "
            f"{[CUSTOMER_ID, TIMESTAMP, AMOUNT]} (see data.prepare_transactions)"
        )
    ts = transactions[TIMESTAMP]
    if not pd.api.types.is_datetime64_dtype(ts.dtype):
        raise TypeError(
            f"column {TIMESTAMP!r} must be naive datetime64 (the data contract converts "
            f"aware timestamps to data.timezone), got {ts.dtype}"
        )
    if AMOUNT not in transactions.columns:
        logger.warning("transactions have no %r column: spend features are 0", AMOUNT)
        rows = transactions[[CUSTOMER_ID, TIMESTAMP]].copy()
        rows[AMOUNT] = 0.0
        return rows
    rows = transactions[[CUSTOMER_ID, TIMESTAMP, AMOUNT]].copy()
    # Rounded to the 8 decimals the features keep, here and once for every engine: DuckDB
    # rounds a double's exact binary value to DECIMAL(38, 8) and Spark its shortest decimal
    # text, so an amount half way between two 8-decimal values (281.828106335) would come
    # out 1e-8 apart on the two engines.
    rows[AMOUNT] = np.round(rows[AMOUNT].to_numpy(dtype=np.float64), 8)
    return rows


@contextmanager
def _session(
    transactions: Rows,
    cfg: FeaturesConfig | None,
    con: duckdb.DuckDBPyConnection | None,
    engine: FeatureEngine | None,
) -> Iterator[tuple[FeatureEngine, Table]]:
    """Yield an engine and ``transactions`` as one of its tables.

    An engine (or DuckDB connection) passed in stays open, without the table made here;
    one opened here is closed.
    """
    if engine is not None and con is not None:
        raise ValueError("give either engine or con, not both")
    own = engine is None
    eng = open_engine(cfg or FeaturesConfig(), con=con) if own else engine
    made = None
    try:
        if isinstance(transactions, Table):
            yield eng, transactions
        else:
            made = eng.table(select_rows(transactions))
            yield eng, made
    finally:
        if own:
            eng.close()
        elif made is not None:
            eng.drop(made)


def _shape(cfg: FeaturesConfig) -> tuple:
    """What in ``cfg`` shapes the feature query (the key of its compiled form)."""
    return tuple(expr.windows(cfg)), int(cfg.trend_window_days)


def _to_features(result: pd.DataFrame, cfg: FeaturesConfig) -> pd.DataFrame:
    """Index the engine's result by customer id and fix dtypes and column order."""
    columns = feature_columns(cfg)
    result[CUSTOMER_ID] = result[CUSTOMER_ID].astype(str)
    # Sorted again in Python's order, whatever collation the SQL ORDER BY used.
    features = result.set_index(CUSTOMER_ID)[columns].astype(np.float64).sort_index()
    features.columns.name = None
    return features


def _empty(cfg: FeaturesConfig) -> pd.DataFrame:
    """A feature frame with no customers (what every engine gives for no rows)."""
    columns = feature_columns(cfg)
    index = pd.Index([], dtype=object, name=CUSTOMER_ID)
    return pd.DataFrame({c: np.array([], dtype=np.float64) for c in columns}, index=index)


def _add_extra(
    features: pd.DataFrame, cutoff: pd.Timestamp, extra: ExtraFeatures | None
) -> pd.DataFrame:
    """Append the columns returned by the ``extra`` hook (if any) to ``features``."""
    if extra is None:
        return features
    added = extra(features, cutoff)
    clash = sorted(set(added.columns) & set(features.columns))
    if clash:
        raise ValueError(f"extra features repeat base feature columns {clash}")
    added = added.reindex(features.index).astype(np.float64)
    return pd.concat([features, added], axis=1)


def build_features(
    transactions: Rows,
    cutoff: pd.Timestamp,
    cfg: FeaturesConfig,
    *,
    extra: ExtraFeatures | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
    engine: FeatureEngine | None = None,
) -> pd.DataFrame:
    """Compute one row of features per customer from the rows up to a cutoff.

    Only rows whose calendar day is <= ``cutoff`` are used; a customer whose first
    purchase is after the cutoff does not appear. All quantities are in days, measured
    between calendar days (a cutoff with a time of day is floored to its day).

    Parameters
    ----------
    transactions : pandas.DataFrame or ibis.Table
        Prepared transactions: ``customer_id`` (str), ``timestamp`` (naive datetime64),
        ``amount`` (float64). Other columns are ignored; row order does not matter. A
        table must live on ``engine`` (e.g. ``engine.read_parquet(path)``).
    cutoff : pandas.Timestamp
        Last day of history visible to the features.
    cfg : FeaturesConfig
        ``windows`` and ``trend_window_days`` shape the columns; ``duckdb_memory_limit``
        and ``duckdb_temp_directory`` apply when this function opens the connection.
    extra : callable, optional
        Hook ``extra(features, cutoff) -> DataFrame`` for additional columns, appended
        after the base columns. BG/NBD features (``cfg.btyd_features``) are meant to come
        through it; this module does not compute them.
    con : duckdb.DuckDBPyConnection, optional
        DuckDB connection to use (its settings are left as they are).
    engine : FeatureEngine, optional
        Engine to use and leave open. By default the engine of ``cfg.engine`` is opened
        and closed.

    Returns
    -------
    pandas.DataFrame
        Index ``customer_id`` (exact strings), sorted; float64 columns in the order of
        :func:`feature_columns`.

    Notes
    -----
    With ``d_1 < ... < d_n`` the customer's occasion days up to the cutoff ``c`` and
    ``a_i`` their net amounts:

    - ``frequency`` = n - 1, ``recency`` = d_n - d_1, ``T`` = c - d_1,
      ``days_since_last`` = T - recency, ``n_occasions`` = n;
    - ``monetary_value`` = mean of a_2..a_n (0 when n = 1); ``avg_occasion_value`` = mean
      of a_1..a_n; ``total_spend`` = sum; ``max_occasion_value`` = max;
    - ``spend_last_{w}`` and ``occasions_last_{w}``: sum and count over days in
      (c - w, c], so a day exactly w days before the cutoff is outside;
    - ``ipt_mean`` and ``ipt_std``: mean and *population* standard deviation of the gaps
      d_{i+1} - d_i; ``ipt_mean`` is 0 without a gap, ``ipt_std`` is 0 with fewer than 2;
    - with w = ``trend_window_days``: ``recent_spend_rate`` = spend in (c - w, c] / w;
      ``earlier_spend_rate`` = spend on days <= c - w divided by T - w, the length of the
      earlier period (0 when T <= w); ``spend_trend`` = (recent - earlier) /
      (recent + earlier) in [-1, 1], 0 when both rates are 0 or when T <= w (too young to
      have an earlier period; at T = w that period would have no length).

    Examples
    --------
    >>> rows = pd.DataFrame({
    ...     "customer_id": ["007", "007", "007"],
    ...     "timestamp": pd.to_datetime(["2020-01-01", "2020-01-01", "2020-01-11"]),
    ...     "amount": [5.0, 5.0, 4.0],
    ... })
    >>> f = build_features(rows, pd.Timestamp("2020-01-31"), FeaturesConfig())
    >>> f.loc["007", ["frequency", "recency", "T", "monetary_value"]].tolist()
    [1.0, 10.0, 30.0, 4.0]
    """
    cutoff = _as_day(cutoff, "cutoff")
    with _session(transactions, cfg, con, engine) as (eng, rows):
        day = cutoff.date()
        result = eng.run(
            lambda t: expr.features(t, day, cfg), rows, ("features", day, _shape(cfg))
        )
    features = _to_features(result, cfg) if len(result) else _empty(cfg)
    logger.debug("features at %s: %d customers", cutoff.date(), len(features))
    return _add_extra(features, cutoff, extra)


def build_occasions(
    transactions: Rows,
    cutoff: pd.Timestamp | None = None,
    *,
    cfg: FeaturesConfig | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
    engine: FeatureEngine | None = None,
) -> pd.DataFrame:
    """Collapse rows into purchase occasions (one per customer-day).

    Parameters
    ----------
    transactions : pandas.DataFrame or ibis.Table
        Prepared transactions (``customer_id``, ``timestamp``, ``amount``).
    cutoff : pandas.Timestamp, optional
        Keep only days <= cutoff. By default every day is kept.
    cfg : FeaturesConfig, optional
        Only its engine settings are used, to open an engine (default: the defaults of
        :class:`FeaturesConfig`, embedded DuckDB).
    con : duckdb.DuckDBPyConnection, optional
        DuckDB connection to use and leave open.
    engine : FeatureEngine, optional
        Engine to use and leave open.

    Returns
    -------
    pandas.DataFrame
        Columns ``customer_id`` (str), ``day`` (datetime64[ns], midnight), ``amount``
        (float64, the day's net sum) and ``n_rows`` (int64), sorted by customer and day.
    """
    until = None if cutoff is None else _as_day(cutoff, "cutoff").date()
    with _session(transactions, cfg, con, engine) as (eng, rows):
        result = eng.run(
            lambda t: expr.occasion_table(t, until), rows, ("occasions", until)
        )
    result = result[[CUSTOMER_ID, DAY, AMOUNT, N_ROWS]]
    result[CUSTOMER_ID] = result[CUSTOMER_ID].astype(str)
    result[DAY] = pd.to_datetime(result[DAY]).astype("datetime64[ns]")
    result[AMOUNT] = result[AMOUNT].astype(np.float64)
    result[N_ROWS] = result[N_ROWS].astype(np.int64)
    return result.reset_index(drop=True)


def build_targets(
    transactions: Rows,
    cutoff: pd.Timestamp,
    horizon_days: int,
    *,
    cfg: FeaturesConfig | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
    engine: FeatureEngine | None = None,
) -> pd.DataFrame:
    """Spend and occasions per customer in the horizon after a cutoff.

    Parameters
    ----------
    transactions : pandas.DataFrame or ibis.Table
        Prepared transactions (``customer_id``, ``timestamp``, ``amount``).
    cutoff : pandas.Timestamp
        Last day of the feature history; it is *not* part of the target window.
    horizon_days : int
        Length of the target window ``(cutoff, cutoff + horizon_days]`` in days.
    cfg : FeaturesConfig, optional
        Only its engine settings are used, to open an engine (default: the defaults of
        :class:`FeaturesConfig`, embedded DuckDB).
    con : duckdb.DuckDBPyConnection, optional
        DuckDB connection to use and leave open.
    engine : FeatureEngine, optional
        Engine to use and leave open.

    Returns
    -------
    pandas.DataFrame
        Index ``customer_id``; float64 ``target_spend`` (net sum of occasion amounts) and
        ``target_occasions`` (occasion days). Only customers with an occasion in the
        window appear; the caller fills 0 for the others.
    """
    if int(horizon_days) <= 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    cutoff = _as_day(cutoff, "cutoff")
    end = cutoff + pd.Timedelta(days=int(horizon_days))
    with _session(transactions, cfg, con, engine) as (eng, rows):
        day, last = cutoff.date(), end.date()
        result = eng.run(lambda t: expr.targets(t, day, last), rows, ("targets", day, last))
    result[CUSTOMER_ID] = result[CUSTOMER_ID].astype(str)
    targets = result.set_index(CUSTOMER_ID)[[TARGET_SPEND, TARGET_OCCASIONS]]
    return targets.astype(np.float64).sort_index()
