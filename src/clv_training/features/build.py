"""Customer features at a cutoff, computed in DuckDB SQL.

A purchase occasion is a customer-day (the calendar day of ``timestamp``) and its amount is
that day's net sum. Everything here works in two stages, which is what keeps DuckDB inside
its memory limit on large logs (see ``STACK_NOTES.md``, "Scale"):

1. rows -> one row per customer-day (``day``, net ``amount``, ``n_rows``);
2. customer-days -> one row per customer; trailing windows are sums with a ``FILTER`` on
   the day, and the inter-occasion gaps come from a ``LAG`` over the customer-days (never a
   window function over raw rows).

Sums are exact: amounts are cast to ``DECIMAL(38, 8)`` before any addition and gaps are
integers, so the features do not depend on row order or on how DuckDB splits the work over
threads (``DATA_CASES.md`` 15).

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
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import duckdb
import numpy as np
import pandas as pd

from clv_training.config import FeaturesConfig
from clv_training.data import AMOUNT, CUSTOMER_ID, TIMESTAMP

logger = logging.getLogger(__name__)

DAY = "day"
N_ROWS = "n_rows"
TARGET_SPEND = "target_spend"
TARGET_OCCASIONS = "target_occasions"

# Limitation: amounts are rounded to 8 decimals (and must stay below 1e30 in absolute
# value) before they are summed. That is what makes the sums exact and independent of row
# order; no currency needs more precision.
_AMOUNT_SQL_TYPE = "DECIMAL(38, 8)"

#: Optional hook for extra features (e.g. BG/NBD expected purchases and P(alive) when
#: ``features.btyd_features`` is on). It gets the base features (index ``customer_id``) and
#: the cutoff, and returns float columns on the same index; they are appended after the
#: base columns in the order it returns them.
ExtraFeatures = Callable[[pd.DataFrame, pd.Timestamp], pd.DataFrame]

_BASE_HEAD = (
    "frequency",
    "recency",
    "T",
    "monetary_value",
    "avg_occasion_value",
    "total_spend",
    "n_occasions",
    "days_since_last",
)
_BASE_TAIL = (
    "ipt_mean",
    "ipt_std",
    "max_occasion_value",
    "recent_spend_rate",
    "earlier_spend_rate",
    "spend_trend",
)


def _windows(cfg: FeaturesConfig) -> list[int]:
    """Return the trailing windows of ``cfg`` as sorted unique positive ints."""
    windows = sorted({int(w) for w in cfg.windows})
    if any(w <= 0 for w in windows):
        raise ValueError(
            f"features.windows must hold positive day counts, got {list(cfg.windows)}"
        )
    if int(cfg.trend_window_days) <= 0:
        raise ValueError(
            f"features.trend_window_days must be positive, got {cfg.trend_window_days}"
        )
    return windows


def feature_columns(cfg: FeaturesConfig) -> list[str]:
    """Return the feature columns of :func:`build_features`, in their fixed order.

    Parameters
    ----------
    cfg : FeaturesConfig
        Feature settings; ``windows`` adds ``spend_last_{w}`` and ``occasions_last_{w}``
        for each window, in ascending order of ``w``.

    Returns
    -------
    list of str
        Column names. Columns added by an ``extra`` hook are not included.

    Examples
    --------
    >>> feature_columns(FeaturesConfig(windows=[90, 30]))[8:12]
    ['spend_last_30', 'occasions_last_30', 'spend_last_90', 'occasions_last_90']
    """
    columns = list(_BASE_HEAD)
    for w in _windows(cfg):
        columns += [f"spend_last_{w}", f"occasions_last_{w}"]
    return columns + list(_BASE_TAIL)


def _as_day(value: pd.Timestamp | str, name: str) -> pd.Timestamp:
    """Return ``value`` as a naive, normalized :class:`pandas.Timestamp`."""
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        raise ValueError(f"{name} must be a naive date, got {ts!r}")
    return ts.normalize()


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


def _check_rows(transactions: pd.DataFrame) -> pd.DataFrame:
    """Return the three columns the SQL needs, after checking they are usable.

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
    return transactions[[CUSTOMER_ID, TIMESTAMP, AMOUNT]]


@contextmanager
def _session(
    transactions: pd.DataFrame,
    cfg: FeaturesConfig | None,
    con: duckdb.DuckDBPyConnection | None,
) -> Iterator[tuple[duckdb.DuckDBPyConnection, str]]:
    """Yield a connection and the name of a view over ``transactions``.

    A connection passed in keeps its own settings and stays open; a fresh one is closed.
    """
    rows = _check_rows(transactions)
    own = con is None
    conn = connect_duckdb(cfg or FeaturesConfig()) if own else con
    name = f"clv_rows_{uuid.uuid4().hex}"
    conn.register(name, rows)
    try:
        yield conn, name
    finally:
        conn.unregister(name)
        if own:
            conn.close()


_ROW_DAY = f"CAST({TIMESTAMP} AS DATE)"


def _occasions_sql(rows: str, where: str = "") -> str:
    """Stage 1: rows -> customer-days (net amount as exact decimal, row count).

    ``where`` is an optional SQL condition on the rows; ``_ROW_DAY`` is their day.
    """
    where = f"WHERE {where}" if where else ""
    return f"""
        SELECT CAST({CUSTOMER_ID} AS VARCHAR) AS customer_id,
               CAST({TIMESTAMP} AS DATE) AS day,
               SUM(CAST({AMOUNT} AS {_AMOUNT_SQL_TYPE})) AS amount,
               COUNT(*) AS n_rows
        FROM "{rows}"
        {where}
        GROUP BY 1, 2
    """


def _features_sql(occasions_sql: str, cfg: FeaturesConfig) -> str:
    """Stage 2: customer-days up to ``$cutoff`` -> one row of features per customer."""
    tw = int(cfg.trend_window_days)
    window_aggs = []
    window_cols = []
    for w in _windows(cfg):
        window_aggs.append(
            f"COALESCE(SUM(amount) FILTER (WHERE age < {w}), 0) AS spend_last_{w},\n"
            f"COUNT(*) FILTER (WHERE age < {w}) AS occasions_last_{w}"
        )
        window_cols.append(
            f"CAST(spend_last_{w} AS DOUBLE) AS spend_last_{w},\n"
            f"CAST(occasions_last_{w} AS DOUBLE) AS occasions_last_{w}"
        )
    window_aggs_sql = ",\n".join(window_aggs)
    window_cols_sql = ",\n".join(window_cols)
    # recent / earlier spend per day; the earlier period is [first day, cutoff - tw] and
    # lasts T - tw days, so it exists only when T > tw.
    recent_rate = f"CAST(recent_spend AS DOUBLE) / {tw}"
    earlier_rate = (
        f"CASE WHEN t_days > {tw} THEN CAST(earlier_spend AS DOUBLE) / (t_days - {tw}) "
        "ELSE 0 END"
    )
    return f"""
        WITH occ AS ({occasions_sql}),
        days AS (
            SELECT customer_id, day, amount,
                   date_diff('day', day, $cutoff) AS age,
                   date_diff('day',
                             LAG(day) OVER (PARTITION BY customer_id ORDER BY day),
                             day) AS gap,
                   day = MIN(day) OVER (PARTITION BY customer_id) AS is_first
            FROM occ
            WHERE day <= $cutoff
        ),
        per_customer AS (
            SELECT customer_id,
                   COUNT(*) AS n_occ,
                   MAX(age) AS t_days,
                   MIN(age) AS since_last,
                   SUM(amount) AS total,
                   COALESCE(SUM(amount) FILTER (WHERE NOT is_first), 0) AS repeat_total,
                   MAX(amount) AS max_amount,
                   COUNT(gap) AS n_gaps,
                   COALESCE(SUM(gap), 0) AS gap_sum,
                   COALESCE(SUM(CAST(gap AS HUGEINT) * gap), 0) AS gap_sq_sum,
                   {window_aggs_sql},
                   COALESCE(SUM(amount) FILTER (WHERE age < {tw}), 0) AS recent_spend,
                   COALESCE(SUM(amount) FILTER (WHERE age >= {tw}), 0) AS earlier_spend
            FROM days
            GROUP BY customer_id
        ),
        rates AS (
            SELECT *, {recent_rate} AS recent_rate, {earlier_rate} AS earlier_rate
            FROM per_customer
        )
        SELECT customer_id,
               CAST(n_occ - 1 AS DOUBLE) AS frequency,
               CAST(t_days - since_last AS DOUBLE) AS recency,
               CAST(t_days AS DOUBLE) AS "T",
               CASE WHEN n_occ > 1 THEN CAST(repeat_total AS DOUBLE) / (n_occ - 1)
                    ELSE 0 END AS monetary_value,
               CAST(total AS DOUBLE) / n_occ AS avg_occasion_value,
               CAST(total AS DOUBLE) AS total_spend,
               CAST(n_occ AS DOUBLE) AS n_occasions,
               CAST(since_last AS DOUBLE) AS days_since_last,
               {window_cols_sql},
               CASE WHEN n_gaps > 0 THEN CAST(gap_sum AS DOUBLE) / n_gaps
                    ELSE 0 END AS ipt_mean,
               CASE WHEN n_gaps > 1
                    THEN sqrt(CAST(GREATEST(n_gaps * gap_sq_sum - gap_sum * gap_sum, 0)
                                   AS DOUBLE)) / n_gaps
                    ELSE 0 END AS ipt_std,
               CAST(max_amount AS DOUBLE) AS max_occasion_value,
               recent_rate AS recent_spend_rate,
               earlier_rate AS earlier_spend_rate,
               CASE WHEN t_days <= {tw} THEN 0
                    WHEN GREATEST(recent_rate, 0) + GREATEST(earlier_rate, 0) = 0 THEN 0
                    ELSE (GREATEST(recent_rate, 0) - GREATEST(earlier_rate, 0))
                         / (GREATEST(recent_rate, 0) + GREATEST(earlier_rate, 0))
                    END AS spend_trend
        FROM rates
        ORDER BY customer_id
    """


def _to_features(result: pd.DataFrame, cfg: FeaturesConfig) -> pd.DataFrame:
    """Index the SQL result by customer id and fix dtypes and column order."""
    columns = feature_columns(cfg)
    result[CUSTOMER_ID] = result[CUSTOMER_ID].astype(str)
    # Sorted again in Python's order, whatever collation the SQL ORDER BY used.
    features = result.set_index(CUSTOMER_ID)[columns].astype(np.float64).sort_index()
    features.columns.name = None
    return features


def _features_query(
    con: duckdb.DuckDBPyConnection,
    occasions_sql: str,
    cutoff: pd.Timestamp,
    cfg: FeaturesConfig,
) -> pd.DataFrame:
    """Run stage 2 over ``occasions_sql`` at ``cutoff`` and return the feature frame."""
    sql = _features_sql(occasions_sql, cfg)
    result = con.execute(sql, {"cutoff": cutoff.date()}).df()
    return _to_features(result, cfg)


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
    transactions: pd.DataFrame,
    cutoff: pd.Timestamp,
    cfg: FeaturesConfig,
    *,
    extra: ExtraFeatures | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
) -> pd.DataFrame:
    """Compute one row of features per customer from the rows up to a cutoff.

    Only rows whose calendar day is <= ``cutoff`` are used; a customer whose first
    purchase is after the cutoff does not appear. All quantities are in days, measured
    between calendar days (a cutoff with a time of day is floored to its day).

    Parameters
    ----------
    transactions : pandas.DataFrame
        Prepared transactions: ``customer_id`` (str), ``timestamp`` (naive datetime64),
        ``amount`` (float64). Other columns are ignored; row order does not matter.
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
        Connection to use (its settings are left as they are). By default a fresh
        in-memory connection is opened and closed.

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
    with _session(transactions, cfg, con) as (conn, rows):
        occasions = _occasions_sql(rows, f"{_ROW_DAY} <= $cutoff")
        features = _features_query(conn, occasions, cutoff, cfg)
    logger.debug("features at %s: %d customers", cutoff.date(), len(features))
    return _add_extra(features, cutoff, extra)


def build_occasions(
    transactions: pd.DataFrame,
    cutoff: pd.Timestamp | None = None,
    *,
    cfg: FeaturesConfig | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
) -> pd.DataFrame:
    """Collapse rows into purchase occasions (one per customer-day).

    Parameters
    ----------
    transactions : pandas.DataFrame
        Prepared transactions (``customer_id``, ``timestamp``, ``amount``).
    cutoff : pandas.Timestamp, optional
        Keep only days <= cutoff. By default every day is kept.
    cfg : FeaturesConfig, optional
        Only its DuckDB settings are used, for a fresh connection (default: the defaults
        of :class:`FeaturesConfig`).
    con : duckdb.DuckDBPyConnection, optional
        Connection to use; by default a fresh in-memory one.

    Returns
    -------
    pandas.DataFrame
        Columns ``customer_id`` (str), ``day`` (datetime64[ns], midnight), ``amount``
        (float64, the day's net sum) and ``n_rows`` (int64), sorted by customer and day.
    """
    params = {} if cutoff is None else {"cutoff": _as_day(cutoff, "cutoff").date()}
    where = "" if cutoff is None else f"{_ROW_DAY} <= $cutoff"
    with _session(transactions, cfg, con) as (conn, rows):
        sql = f"""
            SELECT customer_id, day, CAST(amount AS DOUBLE) AS amount, n_rows
            FROM ({_occasions_sql(rows, where)})
            ORDER BY customer_id, day
        """
        result = conn.execute(sql, params).df()
    result[CUSTOMER_ID] = result[CUSTOMER_ID].astype(str)
    result[DAY] = result[DAY].astype("datetime64[ns]")
    result[AMOUNT] = result[AMOUNT].astype(np.float64)
    result[N_ROWS] = result[N_ROWS].astype(np.int64)
    return result.reset_index(drop=True)


def _targets_query(
    con: duckdb.DuckDBPyConnection,
    occasions_sql: str,
    cutoff: pd.Timestamp,
    horizon_days: int,
) -> pd.DataFrame:
    """Sum the occasions in ``(cutoff, cutoff + horizon]`` per customer."""
    sql = f"""
        SELECT customer_id,
               CAST(SUM(amount) AS DOUBLE) AS {TARGET_SPEND},
               CAST(COUNT(*) AS DOUBLE) AS {TARGET_OCCASIONS}
        FROM ({occasions_sql})
        WHERE day > $cutoff AND day <= $horizon_end
        GROUP BY customer_id
        ORDER BY customer_id
    """
    params = {
        "cutoff": cutoff.date(),
        "horizon_end": (cutoff + pd.Timedelta(days=horizon_days)).date(),
    }
    result = con.execute(sql, params).df()
    result[CUSTOMER_ID] = result[CUSTOMER_ID].astype(str)
    targets = result.set_index(CUSTOMER_ID)[[TARGET_SPEND, TARGET_OCCASIONS]]
    return targets.astype(np.float64).sort_index()


def build_targets(
    transactions: pd.DataFrame,
    cutoff: pd.Timestamp,
    horizon_days: int,
    *,
    cfg: FeaturesConfig | None = None,
    con: duckdb.DuckDBPyConnection | None = None,
) -> pd.DataFrame:
    """Spend and occasions per customer in the horizon after a cutoff.

    Parameters
    ----------
    transactions : pandas.DataFrame
        Prepared transactions (``customer_id``, ``timestamp``, ``amount``).
    cutoff : pandas.Timestamp
        Last day of the feature history; it is *not* part of the target window.
    horizon_days : int
        Length of the target window ``(cutoff, cutoff + horizon_days]`` in days.
    cfg : FeaturesConfig, optional
        Only its DuckDB settings are used, for a fresh connection (default: the defaults
        of :class:`FeaturesConfig`).
    con : duckdb.DuckDBPyConnection, optional
        Connection to use; by default a fresh in-memory one.

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
    window = f"{_ROW_DAY} > $cutoff AND {_ROW_DAY} <= $horizon_end"
    with _session(transactions, cfg, con) as (conn, rows):
        return _targets_query(conn, _occasions_sql(rows, window), cutoff, int(horizon_days))
