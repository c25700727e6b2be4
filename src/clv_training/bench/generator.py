"""Seeded synthetic transaction logs with known BG/NBD and Gamma-Gamma parameters.

Each customer is born (first purchase) at a uniform time in the acquisition period and
then follows the BG/NBD story (Fader, Hardie and Lee 2005): while active, purchases come
as a Poisson process with rate ``lambda ~ Gamma(r, alpha)`` per week; after every repeat
purchase the customer drops out with probability ``p ~ Beta(a, b)``. Spend per purchase
occasion follows Gamma-Gamma: ``z ~ Gamma(p, nu)`` with ``nu ~ Gamma(q, v)`` per customer.
On top of that the log gets what real logs have: a few wholesale customers whose spend
is many times larger (a heavy tail), several rows on one day (a basket), and returns
(negative rows on the purchase day or a few days later).

Everything is vectorised numpy, so 10^7 rows take seconds. The exact-row-count entry
point :func:`generate_rows` sizes the customer base from a small pilot draw;
:func:`write_rows_parquet` writes logs too large to hold (10^8 rows) chunk by chunk.

Simulation of the BG/NBD purchases without a per-customer loop: with ``N ~
Poisson(lambda L)`` events of an unbroken Poisson process in the customer's window of
length ``L`` and ``K ~ Geometric(p)`` the index of the repeat purchase after which the
customer drops out, the customer makes ``m = min(N, K)`` repeat purchases, at the first
``m`` order statistics of ``N`` uniform times. Those are ``S_k / (S_m + G)`` with ``S_k``
the running sums of ``m`` unit exponentials and ``G ~ Gamma(N + 1 - m)`` the sum of the
remaining ones (the Renyi representation of uniform order statistics).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

DAYS_PER_WEEK = 7.0
#: Customers in the pilot draw that sizes the customer base for a target row count.
PILOT_CUSTOMERS = 20_000


@dataclass(frozen=True)
class GeneratorParams:
    """True parameters of the synthetic log (time in weeks, money in currency units).

    Attributes
    ----------
    r, alpha : float
        Purchase rate heterogeneity: ``lambda ~ Gamma(shape=r, rate=alpha)`` per week.
    a, b : float
        Drop-out heterogeneity: ``p ~ Beta(a, b)``, applied after each repeat purchase.
    p, q, v : float
        Gamma-Gamma spend per occasion: ``z ~ Gamma(p, rate=nu)``, ``nu ~ Gamma(q, rate=v)``;
        population mean spend ``p v / (q - 1)``.
    weeks : float
        Length of the log.
    acquisition_weeks : float
        First purchases are uniform in ``[0, acquisition_weeks)``.
    basket_extra_rows : float
        Mean number of extra rows per occasion (Poisson); the occasion's amount is split
        over its rows.
    wholesale_share : float
        Share of customers whose every occasion is ``wholesale_multiplier`` times larger.
        Their purchase process is the same BG/NBD one, so the BG/NBD truth still holds;
        the Gamma-Gamma truth holds only for the other customers.
    wholesale_multiplier : float
        Spend multiplier of wholesale customers.
    return_share : float
        Share of occasions followed by one return row (negative amount, 20-100% of the
        occasion), dated the same day or a geometric number of days later.
    return_delay_days : float
        Mean delay of a return in days.
    start : str
        Calendar day of week 0.
    """

    r: float = 0.5
    alpha: float = 6.0
    a: float = 0.8
    b: float = 3.0
    p: float = 6.0
    q: float = 4.0
    v: float = 15.0
    weeks: float = 104.0
    acquisition_weeks: float = 52.0
    basket_extra_rows: float = 0.8
    wholesale_share: float = 0.002
    wholesale_multiplier: float = 40.0
    return_share: float = 0.04
    return_delay_days: float = 5.0
    start: str = "2022-01-03"

    def as_dict(self) -> dict[str, float | str]:
        """Plain dict of every parameter (for results files)."""
        return asdict(self)


def _segment_cumsum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Running sums of ``values`` restarting at each segment (segments of ``counts``)."""
    total = np.cumsum(values)
    ends = np.cumsum(counts)
    starts = ends - counts
    before = np.where(starts > 0, total[np.maximum(starts - 1, 0)], 0.0)
    return total - np.repeat(before, counts)


def _simulate(
    n_customers: int, params: GeneratorParams, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows as arrays: customer index, day offset, second of day, amount (unsorted)."""
    n = int(n_customers)
    total_days = int(np.floor(params.weeks * DAYS_PER_WEEK))

    # Customer level: birth, rate, drop-out, spend scale, wholesale flag.
    birth = rng.uniform(0.0, params.acquisition_weeks, n)
    window = params.weeks - birth
    lam = rng.gamma(params.r, 1.0 / params.alpha, n)
    drop = rng.beta(params.a, params.b, n)
    nu = rng.gamma(params.q, 1.0 / params.v, n)
    wholesale = rng.random(n) < params.wholesale_share

    # Repeat purchases: m = min(N, K) first order statistics of N uniforms on the window.
    events = rng.poisson(lam * window)
    last_repeat = rng.geometric(np.clip(drop, 1e-12, 1.0))
    m = np.minimum(events, last_repeat)
    running = _segment_cumsum(rng.exponential(1.0, int(m.sum())), m)
    rest = rng.gamma(events + 1.0 - m, 1.0)
    last = np.zeros(n)
    has = m > 0
    last[has] = running[np.cumsum(m)[has] - 1]
    owner = np.repeat(np.arange(n), m)
    repeat_weeks = birth[owner] + window[owner] * running / (last + rest)[owner]

    # Occasions (first + repeats) and their Gamma-Gamma amounts.
    occ_customer = np.concatenate([np.arange(n), owner])
    occ_weeks = np.concatenate([birth, repeat_weeks])
    occ_day = np.minimum(np.floor(occ_weeks * DAYS_PER_WEEK).astype(np.int64), total_days - 1)
    occ_amount = rng.gamma(params.p, 1.0 / nu[occ_customer])
    occ_amount *= np.where(wholesale[occ_customer], params.wholesale_multiplier, 1.0)

    # Baskets: 1 + Poisson extra rows per occasion, amount split by exponential weights.
    n_rows = 1 + rng.poisson(params.basket_extra_rows, len(occ_day))
    row_occ = np.repeat(np.arange(len(occ_day)), n_rows)
    weights = rng.exponential(1.0, len(row_occ))
    weight_sum = np.bincount(row_occ, weights=weights, minlength=len(occ_day))
    row_amount = np.round(occ_amount[row_occ] * weights / weight_sum[row_occ], 2)
    row_customer = occ_customer[row_occ]
    row_day = occ_day[row_occ]

    # Returns: one negative row for a share of occasions, same day or a few days later.
    returned = np.flatnonzero(rng.random(len(occ_day)) < params.return_share)
    delay = rng.geometric(1.0 / (params.return_delay_days + 1.0), len(returned)) - 1
    ret_day = occ_day[returned] + delay
    keep = ret_day < total_days
    returned, ret_day = returned[keep], ret_day[keep]
    ret_amount = -np.round(occ_amount[returned] * rng.uniform(0.2, 1.0, len(returned)), 2)

    customer = np.concatenate([row_customer, occ_customer[returned]])
    day = np.concatenate([row_day, ret_day])
    amount = np.concatenate([row_amount, ret_amount])
    second = rng.integers(8 * 3600, 22 * 3600, len(day))
    return customer, day, second, amount


def _id_width(n: int) -> int:
    """Digits of the ids of ``n`` customers (at least 7, so ``C0000000`` is the first)."""
    return max(7, len(str(max(n - 1, 0))))


def _customer_ids(n: int, offset: int = 0, width: int | None = None) -> np.ndarray:
    width = _id_width(n) if width is None else width
    return np.char.add("C", np.char.zfill(np.arange(offset, offset + n).astype(str), width))


def _to_table(
    customer: np.ndarray, day: np.ndarray, second: np.ndarray, amount: np.ndarray,
    n_customers: int, start: str, *, id_offset: int = 0, id_width: int | None = None,
) -> pa.Table:
    order = np.lexsort((second, day))  # the log in time order, as real logs come
    start_ns = pd.Timestamp(start).value
    stamp = start_ns + (day[order] * 86_400 + second[order]) * 1_000_000_000
    ids = pa.array(_customer_ids(n_customers, id_offset, id_width))
    codes = pa.array(customer[order].astype(np.int32))
    customer_id = pa.DictionaryArray.from_arrays(codes, ids).dictionary_decode()
    return pa.table(
        {
            "customer_id": customer_id,
            "timestamp": pa.array(stamp.astype("datetime64[ns]")),
            "amount": pa.array(amount[order].astype(np.float64)),
        }
    )


def generate_table(
    n_customers: int, params: GeneratorParams | None = None, seed: int = 0
) -> pa.Table:
    """Simulate ``n_customers`` customers; return an Arrow table in time order.

    Parameters
    ----------
    n_customers : int
        Customers to simulate (each has at least one row, bar returns-only edge cases).
    params : GeneratorParams, optional
        True parameters (default :class:`GeneratorParams`).
    seed : int
        Seed of the numpy generator; the same seed gives the same log.

    Returns
    -------
    pyarrow.Table
        Columns ``customer_id`` (string, ``C0000000``...), ``timestamp``
        (timestamp[ns], naive) and ``amount`` (float64, negative for returns).
    """
    params = params or GeneratorParams()
    if n_customers < 1:
        raise ValueError(f"n_customers must be >= 1, got {n_customers}")
    rng = np.random.default_rng(seed)
    customer, day, second, amount = _simulate(n_customers, params, rng)
    return _to_table(customer, day, second, amount, n_customers, params.start)


def generate_transactions(
    n_customers: int, params: GeneratorParams | None = None, seed: int = 0
) -> pd.DataFrame:
    """:func:`generate_table` as a pandas frame (``customer_id`` as Python strings)."""
    frame = generate_table(n_customers, params, seed).to_pandas()
    frame["customer_id"] = frame["customer_id"].astype(object)
    return frame


def _rows_per_customer(params: GeneratorParams, seed: int) -> float:
    """Mean rows per customer in a pilot of :data:`PILOT_CUSTOMERS` (seed ``seed + 1``)."""
    pilot = _simulate(PILOT_CUSTOMERS, params, np.random.default_rng(seed + 1))[0]
    return len(pilot) / PILOT_CUSTOMERS


def _customers_for(n_rows: int, per_customer: float) -> int:
    """Customers to simulate for ``n_rows`` rows: 5% more than expected, plus 10."""
    return max(2, int(np.ceil(1.05 * n_rows / per_customer)) + 10)


def _draw_rows(
    n_rows: int, n_customers: int, params: GeneratorParams, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Simulate ``n_customers``; keep the first customers whose rows fit in ``n_rows``."""
    customer, day, second, amount = _simulate(n_customers, params, rng)
    counts = np.bincount(customer, minlength=n_customers)
    keep_customers = int(np.searchsorted(np.cumsum(counts), n_rows, side="right"))
    keep = customer < keep_customers
    return customer[keep], day[keep], second[keep], amount[keep], keep_customers


def generate_rows(
    n_rows: int, params: GeneratorParams | None = None, seed: int = 0
) -> pa.Table:
    """A log of about ``n_rows`` rows (at most ``n_rows``, whole customers only).

    A pilot of :data:`PILOT_CUSTOMERS` customers (seed ``seed + 1``) estimates rows per
    customer; the main draw simulates 5% more customers than needed and keeps the first
    customers (by id) whose rows fit in ``n_rows``.

    Returns
    -------
    pyarrow.Table
        As :func:`generate_table`.
    """
    params = params or GeneratorParams()
    per_customer = _rows_per_customer(params, seed)
    n_customers = _customers_for(n_rows, per_customer)
    customer, day, second, amount, keep_customers = _draw_rows(
        n_rows, n_customers, params, np.random.default_rng(seed)
    )
    logger.info(
        "generator: %d customers, %d rows (target %d, %.2f rows per customer)",
        keep_customers, len(customer), n_rows, per_customer,
    )
    return _to_table(customer, day, second, amount, keep_customers, params.start)


#: Rows per chunk of :func:`write_rows_parquet` (about 1 GiB of numpy arrays at the peak).
CHUNK_ROWS = 5_000_000
#: Rows per Parquet row group in :func:`write_rows_parquet`.
ROW_GROUP_ROWS = 1_000_000


def write_rows_parquet(
    n_rows: int,
    path: str | Path,
    params: GeneratorParams | None = None,
    seed: int = 0,
    chunk_rows: int = CHUNK_ROWS,
) -> dict[str, int | str]:
    """Write a log of about ``n_rows`` rows to one Parquet file, chunk by chunk.

    The rows are split into chunks of ``chunk_rows``; each chunk is a
    :func:`generate_rows`-style draw of whole customers (at most ``chunk_rows`` rows) from
    its own seed (``numpy.random.SeedSequence(seed).spawn``), and its customers get the
    ids that follow the previous chunk's, so ids are unique across the file. Only one
    chunk is in memory at a time. The same arguments give the same file, byte for byte
    (with the same pyarrow).

    Parameters
    ----------
    n_rows : int
        Target rows (the file has at most this many, whole customers only).
    path : str or Path
        The Parquet file to write (zstd; row groups of :data:`ROW_GROUP_ROWS`).
    params : GeneratorParams, optional
        True parameters (default :class:`GeneratorParams`).
    seed : int
        Seed of the pilot draw (``seed + 1``, as in :func:`generate_rows`) and of the
        chunks' seed sequence.
    chunk_rows : int
        Rows per chunk.

    Returns
    -------
    dict
        ``rows``, ``customers``, ``chunks``, ``bytes`` (file size) and ``path``.

    Notes
    -----
    Timestamps are stored in microseconds (every value is a whole second), the finest
    unit Spark reads from Parquet.
    """
    # Limitation: each chunk is in time order, but the file as a whole is not (chunk k
    # holds customers k only); a real log interleaves every customer over time. Features
    # do not depend on row order, but an engine's locality could.
    params = params or GeneratorParams()
    if n_rows < 1 or chunk_rows < 1:
        raise ValueError(f"n_rows and chunk_rows must be >= 1, got {n_rows}, {chunk_rows}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = [chunk_rows] * (n_rows // chunk_rows)
    if n_rows % chunk_rows:
        targets.append(n_rows % chunk_rows)
    per_customer = _rows_per_customer(params, seed)
    simulated = [_customers_for(t, per_customer) for t in targets]
    width = _id_width(sum(simulated))  # wide enough for every id any chunk could keep
    streams = np.random.SeedSequence(seed).spawn(len(targets))
    offset, rows = 0, 0
    writer: pq.ParquetWriter | None = None
    try:
        for k, (target, n_customers, stream) in enumerate(zip(targets, simulated, streams)):
            customer, day, second, amount, kept = _draw_rows(
                target, n_customers, params, np.random.default_rng(stream)
            )
            table = _to_table(customer, day, second, amount, kept, params.start,
                              id_offset=offset, id_width=width)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd",
                                          coerce_timestamps="us")
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            offset += kept
            rows += table.num_rows
            logger.info("generator chunk %d/%d: %d customers, %d rows", k + 1, len(targets),
                        kept, table.num_rows)
    finally:
        if writer is not None:
            writer.close()
    return {"rows": rows, "customers": offset, "chunks": len(targets),
            "bytes": path.stat().st_size, "path": str(path)}


def write_parquet(table: pa.Table, path: str | Path) -> Path:
    """Write a generated table to Parquet (zstd); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")
    return path
