"""The data contract: typed canonical rows, set-aside rules and counts.

Two entry points share one set of rules:

* :func:`validate_transactions_frame` parses and checks rows that already carry the
  canonical column names (the serving path: ``customer_id``, ``timestamp``, ``amount``);
* :func:`prepare_transactions` does the same for rows from
  :func:`clv_training.data.load.read_raw`, then sets rows aside by reason and counts them.

Every structural problem found is collected before anything is raised, so a user sees
one :class:`DataContractError` listing all of them: the column, up to five offending
source rows with their values and customer ids, and the setting to change.

Parsing rules
-------------
``customer_id``
    Stripped of surrounding blanks and kept as the exact string (``00001`` stays
    ``00001``). Null, empty and blank ids, and the texts that a null turns into when
    someone casts it to ``str`` (``nan``, ``None``, ``<NA>``, ``NaT``, ``null``), are
    missing: those rows are set aside, never kept as a customer called ``"nan"``.
``timestamp``
    Parsed with ``date_format`` (strptime) or, when it is null, as ISO-8601. Aware
    timestamps are converted to ``timezone`` and made naive; naive ones are taken to be
    in ``timezone`` already. The day of a row is ``timestamp.normalize()``.
``amount``
    A finite number; negative amounts are returns and are legal, missing ones are not.
``cancelled`` (optional)
    true/false, t/f, yes/no, y/n, 1/0 (any case) or booleans; a null flag means "not
    cancelled".
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa

from clv_training.config import ColumnsConfig, DataConfig
from clv_training.data import AMOUNT, CANCELLED, COLUMNS, CUSTOMER_ID, SOURCE_ROW, TIMESTAMP

logger = logging.getLogger(__name__)

REASON = "reason"
# Set-aside reasons, in the order the rules are applied.
REASONS = (
    "missing_customer_id",
    "cancelled",
    "after_observation_end",
    "exact_duplicate",
    "nonpositive_net_day",
)
DUPLICATE_POLICIES = ("keep", "drop")
OCCASION_POLICIES = ("positive_net", "any")
# Offending rows quoted per problem.
MAX_EXAMPLES = 5
# Warn when the observation window is shorter than this many median inter-occasion times.
SHORT_WINDOW_FACTOR = 3.0
# Larger amounts are refused: exact feature sums hold 38 digits with 8 decimals, so a
# day's or a customer's total must stay far below 1e30.
MAX_ABS_AMOUNT = 1e15
# Texts that stand for a missing id (what str() makes of None, NaN, pd.NA and NaT).
NULL_ID_TOKENS = frozenset({"", "nan", "none", "null", "<na>", "nat"})
_TRUE_TOKENS = frozenset({"true", "t", "yes", "y", "1", "1.0"})
_FALSE_TOKENS = frozenset({"false", "f", "no", "n", "0", "0.0", ""})
# A trailing UTC offset or "Z" on an ISO-8601 text: the value is time-zone aware.
_OFFSET_PATTERN = r"(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$"
# Relative tolerance on a day's net sum: +10.10 and -10.10 must net to zero, not 1e-15.
_NET_TOLERANCE = 1e-9


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One structural problem: which column, what is wrong, where, and how to fix it.

    Attributes
    ----------
    column : str or None
        Canonical column concerned (None for whole-file problems).
    what : str
        What is wrong, with the number of rows affected.
    fix : str
        The config key or input change that resolves it.
    examples : tuple of str
        Up to :data:`MAX_EXAMPLES` offending rows (source row, customer id, value).
    """

    column: str | None
    what: str
    fix: str
    examples: tuple[str, ...] = ()

    def render(self, label: str) -> str:
        """Format the problem as an indented block headed by ``label`` (e.g. ``"  1."``)."""
        lines = [f"{label} {self.what}"]
        if self.examples:
            lines.append("     rows: " + "; ".join(self.examples))
        lines.append(f"     fix: {self.fix}")
        return "\n".join(lines)


class DataContractError(ValueError):
    """The transaction data breaks the contract; the message lists every problem found.

    Parameters
    ----------
    problems : sequence of Problem
        Everything that was found, in the order checked.
    source : str, optional
        Where the rows came from (a file path), named in the message.

    Attributes
    ----------
    problems : list of Problem
        The problems, for callers that want to format them differently (e.g. an HTTP 400).
    """

    def __init__(self, problems: Sequence[Problem], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        where = f" from {source}" if source else ""
        head = (
            f"Transaction data{where} breaks the data contract "
            f"({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):"
        )
        body = [p.render(f"  {i}.") for i, p in enumerate(self.problems, start=1)]
        super().__init__("\n".join([head, *body]))

    def __reduce__(self):  # keep the problems when pickled (e.g. across processes)
        return (type(self), (self.problems, self.source))


@dataclass(frozen=True)
class _Context:
    """How to name columns and fixes: config keys for a training run, plain names else."""

    # {canonical: (config key, source column)}; empty on the serving path.
    keys: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    available: tuple[str, ...] | None = None
    source: str = ""

    @classmethod
    def from_config(cls, columns: ColumnsConfig, attrs: Mapping | None = None) -> _Context:
        keys = {
            CUSTOMER_ID: ("data.columns.customer_id", columns.customer_id),
            TIMESTAMP: ("data.columns.timestamp", columns.timestamp),
            AMOUNT: ("data.columns.amount", columns.amount),
        }
        if columns.cancelled is not None:
            keys[CANCELLED] = ("data.columns.cancelled", columns.cancelled)
        attrs = attrs or {}
        available = attrs.get("available_columns")
        return cls(
            keys=keys,
            available=tuple(available) if available is not None else None,
            source=str(attrs.get("source", "")),
        )

    @property
    def from_config_file(self) -> bool:
        return bool(self.keys)

    def label(self, column: str) -> str:
        """``amount (source column 'price', data.columns.amount)`` or just ``amount``."""
        if column in self.keys:
            key, source_column = self.keys[column]
            if source_column != column:
                return f"{column} (source column {source_column!r}, {key})"
            return f"{column} ({key})"
        return column

    def set_column(self, column: str, placeholder: str) -> str:
        """How to point ``column`` at another source column."""
        if column in self.keys:
            return f"set {self.keys[column][0]}={placeholder}"
        return f"send the values in a column named {column!r}"


# --------------------------------------------------------------------------------------
# Parsing (each parser returns NA where a value cannot be read; the schema reports it)
# --------------------------------------------------------------------------------------


def _text(value: object) -> str:
    """One value as it would read in the file, for messages."""
    if _is_null(value):
        return "<empty>"
    return repr(value) if isinstance(value, str) else str(value)


def normalise_customer_ids(values: pd.Series) -> pd.Series:
    """Return ids as stripped Python strings (object dtype), ``None`` where missing.

    Parameters
    ----------
    values : pandas.Series
        Ids as read: text, or numbers when they come from a typed (Parquet) file.

    Returns
    -------
    pandas.Series
        object dtype of ``str`` or ``None``, same index.
    """
    if pd.api.types.is_float_dtype(values.dtype):
        # Integer ids stored as float (a column with nulls): 1234.0 -> "1234".
        # Limitation: ids above 2**53 have already lost digits in a float column, and
        # non-integral float ids keep their repr ("12.5").
        finite = values.dropna()
        if len(finite) and bool(np.all(np.mod(finite.to_numpy(), 1) == 0)):
            values = values.astype("Int64")
    text = _stripped_text(values)
    null_token = text.str.lower().isin(NULL_ID_TOKENS).to_numpy(dtype=bool)
    return _object_series(text.to_numpy(dtype=object), values.index, null_token)


def _is_null(value: object) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _object_series(
    items: np.ndarray, index: pd.Index, missing: np.ndarray | None = None
) -> pd.Series:
    """An object Series of ``items`` with ``None`` where ``missing`` (pandas 3 would
    otherwise infer its ``str`` dtype with NaN for missing values)."""
    arr = np.asarray(items, dtype=object).copy()
    if missing is not None:
        arr[missing] = None
    return pd.Series(arr, index=index, dtype=object)


def _stripped_text(values: pd.Series) -> pd.Series:
    """Values as stripped Python strings (object dtype), ``None`` where null."""
    missing = values.isna().to_numpy(dtype=bool)
    text = values.astype(str).str.strip().to_numpy(dtype=object)
    return _object_series(text, values.index, missing)


def check_timezone(timezone: str) -> str | None:
    """Return None when ``timezone`` is a time zone pandas knows, else the reason."""
    try:
        pd.Timestamp("2000-01-01").tz_localize(timezone)
    except Exception as exc:  # pytz, zoneinfo and dateutil raise different types
        return f"{type(exc).__name__}: {exc}"
    return None


def _to_naive(parsed: pd.Series, timezone: str) -> pd.Series:
    """Aware -> converted to ``timezone`` and made naive; naive -> unchanged."""
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        parsed = parsed.dt.tz_convert(timezone).dt.tz_localize(None)
    return parsed


def _as_ns(parsed: pd.Series) -> pd.Series:
    """Cast naive datetimes of any resolution to ``datetime64[ns]``, NaT when out of range."""
    lo, hi = pd.Timestamp.min, pd.Timestamp.max
    out_of_range = parsed.notna() & ((parsed < lo) | (parsed > hi))
    parsed = parsed.mask(out_of_range)
    return parsed.astype("datetime64[ns]")


def parse_timestamps(
    values: pd.Series, date_format: str | None = None, timezone: str = "UTC"
) -> pd.Series:
    """Parse timestamps to naive ``datetime64[ns]`` in ``timezone``; NaT where unreadable.

    Parameters
    ----------
    values : pandas.Series
        Text (any format ``date_format`` describes), numbers such as ``19970101`` (read
        as their digits) or datetimes (naive or aware).
    date_format : str, optional
        strptime format; None means ISO-8601.
    timezone : str
        Zone that aware values are converted to and naive values are taken to be in.

    Returns
    -------
    pandas.Series
        ``datetime64[ns]``, naive, same index; NaT for missing, unparsable or
        out-of-range (outside 1677-2262) values.
    """
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return _as_ns(_to_naive(values, timezone))

    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(
        values.dtype
    ):
        # Numbers such as 19970101 (Parquet, or a CSV read with types): parse the digits.
        values = normalise_customer_ids(values)
    text = _stripped_text(values)
    # Limitation: strptime is lenient about zero padding, so "%Y%m%d" reads the 7-digit
    # "1997013" as 1997-01-03 instead of rejecting it.
    fmt = date_format or "ISO8601"
    try:
        parsed = pd.to_datetime(text, format=fmt, errors="coerce")
        return _as_ns(_to_naive(parsed, timezone))
    except (ValueError, TypeError):
        # Mixed offsets, or aware and naive texts in one column: pandas refuses to put
        # them in one dtype. Parse the aware ones through UTC, the naive ones as they are.
        pass
    aware = text.str.contains(_OFFSET_PATTERN, regex=True, na=False)
    if date_format is not None and re.search(r"%[zZ]", date_format):
        aware = text.notna()
    result = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns]")
    if aware.any():
        utc = pd.to_datetime(text[aware], format=fmt, errors="coerce", utc=True)
        result[aware] = _as_ns(_to_naive(utc, timezone))
    naive = ~aware & text.notna()
    if naive.any():
        plain = pd.to_datetime(text[naive], format=fmt, errors="coerce")
        result[naive] = _as_ns(_to_naive(plain, timezone))
    return result


def parse_amounts(values: pd.Series) -> pd.Series:
    """Parse amounts to float64; NaN where missing or not a number (inf is kept).

    Parameters
    ----------
    values : pandas.Series
        Text or numbers.

    Returns
    -------
    pandas.Series
        float64, same index.
    """
    if pd.api.types.is_bool_dtype(values.dtype):
        # True/False is not an amount: report every row instead of reading 1.0 and 0.0.
        return pd.Series(np.nan, index=values.index, dtype="float64")
    if pd.api.types.is_numeric_dtype(values.dtype):
        return values.astype("float64")
    text = _stripped_text(values)
    return pd.to_numeric(text, errors="coerce").astype("float64")


def parse_flags(values: pd.Series) -> pd.Series:
    """Parse a cancelled flag to the nullable ``boolean`` dtype; NA where not boolean-like.

    Null flags read as False (not cancelled).
    """
    if pd.api.types.is_bool_dtype(values.dtype):
        return values.astype("boolean").fillna(False)

    tokens = _stripped_text(values).str.lower()
    flags = pd.Series(pd.NA, index=values.index, dtype="boolean")
    flags[tokens.isin(_TRUE_TOKENS).to_numpy(dtype=bool)] = True
    flags[tokens.isin(_FALSE_TOKENS).to_numpy(dtype=bool) | tokens.isna().to_numpy()] = False
    return flags


# --------------------------------------------------------------------------------------
# Schema and validation
# --------------------------------------------------------------------------------------


def raw_rows_schema(columns: Sequence[str]) -> pa.DataFrameSchema:
    """Pandera schema of parsed canonical rows, for the columns present.

    Parameters
    ----------
    columns : sequence of str
        Canonical columns present in the frame (``source_row`` is always checked).

    Returns
    -------
    pandera.pandas.DataFrameSchema
        Missing ids are allowed here (they are set aside, not errors); timestamps and
        amounts must be present after parsing, amounts finite, flags boolean and
        ``source_row`` unique.
    """
    spec = {
        CUSTOMER_ID: pa.Column(object, nullable=True),
        TIMESTAMP: pa.Column("datetime64[ns]", nullable=False),
        AMOUNT: pa.Column(
            "float64",
            nullable=False,
            checks=pa.Check(
                lambda s: np.isfinite(s) & (np.abs(s) < MAX_ABS_AMOUNT),
                name="finite",
                ignore_na=True,
            ),
        ),
        CANCELLED: pa.Column("boolean", nullable=False),
        SOURCE_ROW: pa.Column("int64", unique=True),
    }
    wanted = [c for c in spec if c in columns or c == SOURCE_ROW]
    return pa.DataFrameSchema({c: spec[c] for c in wanted}, strict=False, ordered=False)


def _examples(
    positions: np.ndarray, raw: pd.DataFrame, parsed: pd.DataFrame, column: str | None
) -> tuple[str, ...]:
    """Quote the first offending rows: source row, customer id and the raw value."""
    out = []
    for pos in positions[:MAX_EXAMPLES]:
        parts = [f"source_row {int(parsed[SOURCE_ROW].iat[pos])}"]
        if CUSTOMER_ID in parsed.columns:
            cid = parsed[CUSTOMER_ID].iat[pos]
            parts.append(f"customer_id {cid!r}" if cid is not None else "customer_id <empty>")
        if column is not None and column in raw.columns and column != CUSTOMER_ID:
            parts.append(f"{column} {_text(raw[column].iat[pos])}")
        out.append(", ".join(parts))
    return tuple(out)


def _count(n: int, total: int) -> str:
    return f"{n:,} of {total:,} rows"


def _timestamp_fix(ctx: _Context, date_format: str | None, sample: object) -> str:
    guess = None
    if isinstance(sample, str):
        try:
            from pandas.tseries.api import guess_datetime_format

            guess = guess_datetime_format(sample.strip())
        except Exception:  # a guess is only a hint
            guess = None
    now = f"now {date_format!r}" if date_format else "now null, i.e. ISO-8601"
    hint = f" (perhaps {guess!r}; check day/month order)" if guess else ""
    if ctx.from_config_file:
        return (
            f"set data.date_format=<strptime format of these values>{hint} ({now}), or "
            f"{ctx.set_column(TIMESTAMP, '<your timestamp column>')} if this is not it"
        )
    return f"send ISO-8601 timestamps such as '2024-01-31T12:00:00'{hint}"


def _problems_from_failures(
    failures: pd.DataFrame,
    raw: pd.DataFrame,
    parsed: pd.DataFrame,
    ctx: _Context,
    date_format: str | None,
) -> list[Problem]:
    """Turn Pandera's failure cases into problems, one per column and kind of fault."""
    # After a failure the later checks of a column can repeat rows: keep each once.
    failures = failures.dropna(subset=["index"]).drop_duplicates(
        subset=["column", "check", "index"]
    )
    n = len(parsed)
    problems: list[Problem] = []
    for (column, check), group in failures.groupby(["column", "check"], sort=False):
        pos = np.sort(group["index"].astype(np.int64).unique())
        label = ctx.label(column)
        raw_missing = (
            raw[column].iloc[pos].map(_is_null).to_numpy(dtype=bool)
            if column in raw.columns
            else np.zeros(len(pos), dtype=bool)
        )

        def add(mask: np.ndarray, what: str, fix: str, col: str = column) -> None:
            if mask.any():
                problems.append(
                    Problem(col, what, fix, _examples(pos[mask], raw, parsed, col))
                )

        if column == TIMESTAMP and check == "not_nullable":
            bad = pos[~raw_missing]
            sample = raw[TIMESTAMP].iat[bad[0]] if len(bad) else None
            fix = _timestamp_fix(ctx, date_format, sample)
            if ctx.from_config_file and len(bad) == 1 and bad[0] == 0 and n > 1:
                fix += "; if the first row is a header line, set data.names=null"
            add(
                ~raw_missing,
                f"{label}: {_count(int((~raw_missing).sum()), n)} have a timestamp that "
                "cannot be parsed (or lies outside 1677-2262)",
                fix,
            )
            add(
                raw_missing,
                f"{label}: {_count(int(raw_missing.sum()), n)} have no timestamp",
                "fill in the timestamps or remove these rows from the input",
            )
        elif column == AMOUNT and check == "not_nullable":
            add(
                ~raw_missing,
                f"{label}: {_count(int((~raw_missing).sum()), n)} have an amount that is "
                "not a number",
                "write plain numbers ('.' as decimal mark, no currency sign or thousands "
                f"separator), or {ctx.set_column(AMOUNT, '<your numeric amount column>')}",
            )
            add(
                raw_missing,
                f"{label}: {_count(int(raw_missing.sum()), n)} have no amount",
                "fill in the amounts (negative for returns) or remove these rows",
            )
        elif column == AMOUNT and check == "finite":
            add(
                np.ones(len(pos), dtype=bool),
                f"{label}: {_count(len(pos), n)} have an infinite amount or one of "
                f"{MAX_ABS_AMOUNT:.0e} or more",
                "replace them with real amounts or remove these rows",
            )
        elif column == CANCELLED and check == "not_nullable":
            add(
                np.ones(len(pos), dtype=bool),
                f"{label}: {_count(len(pos), n)} have a cancelled flag that is not "
                "boolean-like (true/false, yes/no, 1/0)",
                f"{ctx.set_column(CANCELLED, '<a true/false column>')}"
                + (", or set data.columns.cancelled=null to use no flag"
                   if ctx.from_config_file else ""),
            )
        elif column == SOURCE_ROW:
            add(
                np.ones(len(pos), dtype=bool),
                f"{SOURCE_ROW}: {_count(len(pos), n)} repeat another row's number",
                f"leave out the {SOURCE_ROW!r} column or make it a unique row number",
            )
        else:  # a dtype failure means a parser above is wrong: say so plainly
            cases = ", ".join(map(str, group["failure_case"].head(MAX_EXAMPLES)))
            problems.append(
                Problem(column, f"{label}: failed check {check!r} ({cases})",
                        "report this: the parsed column has an unexpected type")
            )
    return problems


def _missing_column_problems(
    frame: pd.DataFrame, attrs: Mapping, ctx: _Context
) -> list[Problem]:
    """A problem for every mapped column that the input does not have."""
    available = list(ctx.available) if ctx.available is not None else [
        str(c) for c in frame.columns if c != SOURCE_ROW
    ]
    shown = ", ".join(repr(c) for c in available[:30]) or "none"
    if len(available) > 30:
        shown += f", ... ({len(available)} in all)"
    missing = dict(attrs.get("missing_columns", {}))
    problems = []
    required = list(COLUMNS) + [c for c in ctx.keys if c == CANCELLED]
    for column in required:
        if column in frame.columns:
            continue
        if column in ctx.keys:
            key, source_column = ctx.keys[column]
            source_column = missing.get(key, source_column)
            what = (
                f"{column}: the mapped column {source_column!r} ({key}) is not in the "
                f"input; columns present: {shown}"
            )
            fix = f"set {key}=<one of the columns present>"
            if len(available) == 1 and re.search(r"[;,\t|]", available[0]):
                fix += (
                    "; the file was read as one column, so its separator is probably "
                    "different: set data.format (csv | whitespace) or convert the file"
                )
        else:
            what = f"{column}: the input has no column {column!r}; columns present: {shown}"
            fix = f"send a column named {column!r}"
        problems.append(Problem(column, what, fix))
    return problems


def _validate(
    df: pd.DataFrame, *, timezone: str, date_format: str | None, ctx: _Context
) -> tuple[pd.DataFrame, list[Problem]]:
    """Parse and check rows; return the parsed frame and every problem found.

    The parsed frame has RangeIndex positions 0..n-1 and only the canonical columns
    present; it is only safe to use when the list of problems is empty.
    """
    raw = df.reset_index(drop=True)
    attrs = dict(df.attrs)
    # A zero-byte file has no columns at all: "no data rows" is then the one problem.
    no_columns = len(raw) == 0 and not [c for c in raw.columns if c != SOURCE_ROW]
    problems = [] if no_columns else _missing_column_problems(raw, attrs, ctx)

    tz_error = check_timezone(timezone)
    if tz_error is not None:
        key = "set data.timezone" if ctx.from_config_file else "use"
        problems.append(
            Problem(TIMESTAMP, f"unknown time zone {timezone!r} ({tz_error})",
                    f"{key} an IANA time zone name such as 'UTC' or 'Europe/Berlin'")
        )
        timezone = "UTC"  # keep checking the other columns

    if len(raw) == 0:
        where = f" {ctx.source}" if ctx.source else ""
        fix = (
            "point data.path / data.file at a file with transactions (and check "
            "data.names, data.format)"
            if ctx.from_config_file
            else "send at least one transaction row"
        )
        problems.append(Problem(None, f"the input{where} has no data rows", fix))

    parsed = pd.DataFrame(index=raw.index)
    if CUSTOMER_ID in raw.columns:
        parsed[CUSTOMER_ID] = normalise_customer_ids(raw[CUSTOMER_ID])
    if TIMESTAMP in raw.columns:
        parsed[TIMESTAMP] = parse_timestamps(raw[TIMESTAMP], date_format, timezone)
    if AMOUNT in raw.columns:
        parsed[AMOUNT] = parse_amounts(raw[AMOUNT])
    if CANCELLED in raw.columns:
        parsed[CANCELLED] = parse_flags(raw[CANCELLED])
    if SOURCE_ROW in raw.columns:
        rows = pd.to_numeric(raw[SOURCE_ROW], errors="coerce")
        if rows.isna().any() or not np.all(np.mod(rows.to_numpy(dtype=float), 1) == 0):
            problems.append(Problem(SOURCE_ROW, f"{SOURCE_ROW} holds non-integer values",
                                    f"leave out the {SOURCE_ROW!r} column"))
            rows = pd.Series(np.arange(len(raw)), index=raw.index)
        parsed[SOURCE_ROW] = rows.astype(np.int64)
    else:
        parsed[SOURCE_ROW] = np.arange(len(raw), dtype=np.int64)

    if len(raw):
        schema = raw_rows_schema(list(parsed.columns))
        try:
            schema.validate(parsed, lazy=True)
        except pa.errors.SchemaErrors as exc:
            problems.extend(
                _problems_from_failures(exc.failure_cases, raw, parsed, ctx, date_format)
            )
    if CANCELLED in parsed.columns and not problems:
        parsed[CANCELLED] = parsed[CANCELLED].astype(bool)
    return parsed, problems


def validate_transactions_frame(
    df: pd.DataFrame,
    *,
    timezone: str = "UTC",
    date_format: str | None = None,
    columns: ColumnsConfig | None = None,
) -> pd.DataFrame:
    """Parse and check transactions that carry the canonical column names.

    This is the serving path's check (rows sent over HTTP) and the first step of
    :func:`prepare_transactions`, so both apply the same rules and messages.

    Parameters
    ----------
    df : pandas.DataFrame
        Columns ``customer_id``, ``timestamp``, ``amount``; optional ``cancelled`` and
        ``source_row`` (added as 0..n-1 when absent). Other columns are ignored.
    timezone : str, default "UTC"
        Zone that aware timestamps are converted to and naive ones are taken to be in.
    date_format : str, optional
        strptime format of text timestamps; None means ISO-8601.
    columns : ColumnsConfig, optional
        When given, messages name the ``data.columns.*`` keys to change; otherwise they
        say which column to send.

    Returns
    -------
    pandas.DataFrame
        The canonical columns present, typed: ``customer_id`` object (str, ``None`` where
        missing: the caller decides what to do with those rows), ``timestamp``
        ``datetime64[ns]`` naive, ``amount`` float64 (negative = return), ``cancelled``
        bool, ``source_row`` int64; RangeIndex, input order.

    Raises
    ------
    DataContractError
        Missing column, no rows, unparsable or missing timestamps, non-numeric, missing
        or infinite amounts, non-boolean flags, unknown time zone: all listed at once.
    """
    ctx = (
        _Context.from_config(columns, df.attrs) if columns is not None
        else _Context(source=str(df.attrs.get("source", "")))
    )
    parsed, problems = _validate(df, timezone=timezone, date_format=date_format, ctx=ctx)
    if problems:
        raise DataContractError(problems, ctx.source)
    return parsed


# --------------------------------------------------------------------------------------
# Set-aside rules
# --------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    """Rows used for training, rows kept out (with a reason), counts and the last day.

    Attributes
    ----------
    transactions : pandas.DataFrame
        Rows used: ``customer_id`` (str), ``timestamp`` (datetime64[ns]), ``amount``
        (float64), ``source_row`` (int64), sorted by customer_id, timestamp, source_row.
    set_aside : pandas.DataFrame
        Rows kept out: the canonical columns plus ``reason``, sorted by source_row.
    counts : dict of str to int
        ``rows_in``, ``rows_used``, ``set_aside_<reason>`` for every reason,
        ``customers_in``, ``customers_used``, ``exact_duplicates_kept``,
        ``negative_amount_rows``, ``zero_amount_rows``.
    observation_end : pandas.Timestamp
        Last observed day (normalized); default the last transaction day.
    """

    transactions: pd.DataFrame
    set_aside: pd.DataFrame
    counts: dict[str, int]
    observation_end: pd.Timestamp


def _parse_observation_end(
    value: str | pd.Timestamp | None, ctx: _Context
) -> tuple[pd.Timestamp | None, list[Problem]]:
    """Read an observation end (a day) or report it as a problem."""
    if value is None:
        return None, []
    try:
        end = pd.Timestamp(value)
        if pd.isna(end):
            raise ValueError("empty")
        end = end.as_unit("ns")  # out of 1677..2262 raises here, not later
    except (ValueError, TypeError, pd.errors.OutOfBoundsDatetime) as exc:
        return None, [
            Problem(None, f"observation end {value!r} is not a date ({exc})",
                    "give a day between 1677 and 2262 as YYYY-MM-DD: data.observation_end "
                    "when training, the as_of param or AS_OF when scoring (or leave it out "
                    "for the last transaction day)")
        ]
    if end.tzinfo is not None:
        end = end.tz_localize(None)
    return end.normalize().as_unit("ns"), []


def _policy_problems(cfg: DataConfig) -> list[Problem]:
    problems = []
    if cfg.duplicates not in DUPLICATE_POLICIES:
        problems.append(Problem(None, f"data.duplicates={cfg.duplicates!r} is not a policy",
                                f"set data.duplicates to one of {DUPLICATE_POLICIES}"))
    if cfg.occasion_policy not in OCCASION_POLICIES:
        problems.append(
            Problem(None, f"data.occasion_policy={cfg.occasion_policy!r} is not a policy",
                    f"set data.occasion_policy to one of {OCCASION_POLICIES}")
        )
    return problems


def _too_few_customers(ids: pd.Series, ctx: _Context, after: str) -> Problem:
    distinct = sorted(set(ids.dropna()))
    shown = ", ".join(repr(c) for c in distinct) or "none"
    key = ctx.keys.get(CUSTOMER_ID, ("data.columns.customer_id", CUSTOMER_ID))
    return Problem(
        CUSTOMER_ID,
        f"{ctx.label(CUSTOMER_ID)}: {len(distinct)} distinct customer id(s) {after} "
        f"({shown}); a CLV model needs at least two customers",
        f"check that {key[0]} names the customer column (now {key[1]!r}), and "
        "data.observation_end, data.columns.cancelled and data.max_customers",
    )


def _customer_day(customer: np.ndarray, day: np.ndarray) -> np.ndarray:
    """One int64 key per (customer code, day number), ordered by customer then day."""
    first_day = int(day.min())
    span = int(day.max()) - first_day + 1
    return customer.astype(np.int64) * span + (day - first_day)


def _nonpositive_days(
    customer: np.ndarray, day: np.ndarray, amount: np.ndarray, open_rows: np.ndarray
) -> np.ndarray:
    """Rows (among ``open_rows``) of customer-days whose net amount is <= 0.

    ``customer`` and ``day`` are integer codes (customer index, day number).
    """
    codes = pd.factorize(_customer_day(customer[open_rows], day[open_rows]))[0]
    values = amount[open_rows]
    net = np.bincount(codes, weights=values)
    gross = np.bincount(codes, weights=np.abs(values))
    bad = np.zeros(len(customer), dtype=bool)
    bad[open_rows] = (net <= _NET_TOLERANCE * gross)[codes]
    return bad


def _warn_short_window(customer: np.ndarray, day: np.ndarray, end_day: int) -> int:
    """Warn when the window is short against the repeat buyers' inter-occasion times.

    ``customer`` and ``day`` are integer codes of the rows used (day numbers in days).
    Returns 1 when it warned (the job tags the run with it), else 0.
    """
    if len(customer) == 0:
        return 0
    first_day = int(day.min())
    span = int(day.max()) - first_day + 1
    # One occasion per customer-day, sorted by customer then day.
    occasions = np.unique(_customer_day(customer, day))
    occasion_customer, occasion_day = np.divmod(occasions, span)
    same_customer = occasion_customer[1:] == occasion_customer[:-1]
    gaps = np.diff(occasion_day)[same_customer]
    window = int(end_day - first_day)
    if gaps.size == 0:
        logger.warning(
            "No customer has a repeat purchase occasion in the %d-day window: repeat-purchase "
            "and churn estimates cannot be trusted.",
            window,
        )
        return 1
    median_gap = float(np.median(gaps))
    if window < SHORT_WINDOW_FACTOR * median_gap:
        logger.warning(
            "The observation window (%d days) is shorter than %.0fx the median "
            "inter-occasion time of repeat buyers (%.0f days): churn estimates are "
            "unreliable; use a longer log if you have one.",
            window,
            SHORT_WINDOW_FACTOR,
            median_gap,
        )
        return 1
    return 0


def _log_summary(counts: Mapping[str, int], end: pd.Timestamp) -> None:
    aside = ", ".join(f"{r} {counts[f'set_aside_{r}']:,}" for r in REASONS)
    logger.info(
        "Data contract: %s rows in, %s used, %s set aside (%s); %s customers in, %s used; "
        "observation end %s; %s exact duplicates kept; %s negative and %s zero amounts.",
        f"{counts['rows_in']:,}",
        f"{counts['rows_used']:,}",
        f"{counts['rows_in'] - counts['rows_used']:,}",
        aside,
        f"{counts['customers_in']:,}",
        f"{counts['customers_used']:,}",
        end.date().isoformat(),
        f"{counts['exact_duplicates_kept']:,}",
        f"{counts['negative_amount_rows']:,}",
        f"{counts['zero_amount_rows']:,}",
    )


def _typed(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    out = frame[list(columns)].copy()
    out[CUSTOMER_ID] = out[CUSTOMER_ID].astype(object)
    out[TIMESTAMP] = out[TIMESTAMP].astype("datetime64[ns]")
    out[AMOUNT] = out[AMOUNT].astype("float64")
    out[SOURCE_ROW] = out[SOURCE_ROW].astype(np.int64)
    if CANCELLED in out.columns:
        out[CANCELLED] = out[CANCELLED].astype(bool)
    return out


def prepare_transactions(
    raw: pd.DataFrame,
    cfg: DataConfig,
    observation_end: str | pd.Timestamp | None = None,
    *,
    min_customers: int = 2,
) -> PreparedData:
    """Validate raw rows and split them into rows used and rows set aside.

    The rules run in this order, each on the rows still in use:

    1. ``missing_customer_id``: null, empty or blank id (also ``"nan"`` and friends);
    2. ``cancelled``: the configured flag is true;
    3. ``after_observation_end``: the row's day is after the observation end;
    4. ``exact_duplicate`` (only with ``data.duplicates=drop``): a later copy of an
       earlier row's (customer_id, timestamp, amount); with ``keep`` they are counted;
    5. ``nonpositive_net_day`` (only with ``data.occasion_policy=positive_net``): every
       row of a customer-day whose net amount is <= 0.

    Parameters
    ----------
    raw : pandas.DataFrame
        Canonical raw rows from :func:`clv_training.data.load.read_raw`.
    cfg : DataConfig
        ``date_format``, ``timezone``, ``observation_end``, ``duplicates``,
        ``occasion_policy`` and ``columns`` (named in messages).
    observation_end : str or pandas.Timestamp, optional
        Overrides ``cfg.observation_end``. Default: the last day of the rows that have a
        customer id (never the wall clock).
    min_customers : int
        Fewest customers that must be left: 2 for training (a model of one customer is
        no model); scoring passes 0, since one customer is a legitimate request.

    Returns
    -------
    PreparedData

    Raises
    ------
    DataContractError
        Every structural problem at once, including fewer than two customers left.

    Notes
    -----
    ``negative_amount_rows`` and ``zero_amount_rows`` count the rows in (before any
    set-aside), so they describe the file; what the occasion policy removed is
    ``set_aside_nonpositive_net_day``.
    """
    ctx = _Context.from_config(cfg.columns, raw.attrs)
    problems = _policy_problems(cfg)
    frame, found = _validate(
        raw, timezone=cfg.timezone, date_format=cfg.date_format, ctx=ctx
    )
    problems += found
    end, end_problems = _parse_observation_end(
        observation_end if observation_end is not None else cfg.observation_end, ctx
    )
    problems += end_problems
    if problems:
        if CUSTOMER_ID in frame.columns and len(frame):
            ids = frame[CUSTOMER_ID]
            if ids.nunique(dropna=True) < min(min_customers, 2):
                problems.append(_too_few_customers(ids, ctx, "in the input"))
        raise DataContractError(problems, ctx.source)

    # Limitation: the rules run in pandas/NumPy in memory (about 4 s per million rows on
    # two cores, most of it parsing text); logs far beyond 10^7 rows need a chunked or
    # DuckDB version of this function.

    # Rows in source order, so that "later copies" of a duplicate are the later rows.
    frame = frame.sort_values(SOURCE_ROW, kind="stable").reset_index(drop=True)
    n = len(frame)
    reason = np.full(n, None, dtype=object)
    open_rows = np.ones(n, dtype=bool)

    def set_aside(mask: np.ndarray, name: str) -> None:
        hit = mask & open_rows
        reason[hit] = name
        open_rows[hit] = False

    # Integer codes keep the rules fast on large logs: customers in sorted id order (-1
    # for a missing id), days as day numbers.
    customer = pd.factorize(frame[CUSTOMER_ID], sort=True)[0]
    stamp = frame[TIMESTAMP].to_numpy(dtype="datetime64[ns]")
    day = stamp.astype("datetime64[D]").astype(np.int64)
    amount = frame[AMOUNT].to_numpy(dtype=np.float64)

    has_id = customer >= 0
    set_aside(~has_id, "missing_customer_id")
    if CANCELLED in frame.columns:
        set_aside(frame[CANCELLED].to_numpy(dtype=bool), "cancelled")

    if end is None:
        end = pd.Timestamp(int(day[has_id].max() if has_id.any() else day.max()), unit="D")
    end_day = int(np.datetime64(end.date(), "D").astype(np.int64))
    set_aside(day > end_day, "after_observation_end")

    duplicated = np.zeros(n, dtype=bool)
    if open_rows.any():
        same = pd.DataFrame(
            {"c": customer[open_rows], "t": stamp[open_rows].view(np.int64),
             "a": amount[open_rows]}
        )
        duplicated[open_rows] = same.duplicated(keep="first").to_numpy()
    duplicates_kept = 0
    if cfg.duplicates == "drop":
        set_aside(duplicated, "exact_duplicate")
    else:
        duplicates_kept = int(duplicated.sum())

    if cfg.occasion_policy == "positive_net" and open_rows.any():
        set_aside(_nonpositive_days(customer, day, amount, open_rows), "nonpositive_net_day")

    customers_used = np.unique(customer[open_rows]).size
    if customers_used < min_customers:
        raise DataContractError(
            [_too_few_customers(frame.loc[open_rows, CUSTOMER_ID], ctx,
                                "left after setting rows aside")],
            ctx.source,
        )

    used = np.flatnonzero(open_rows)
    # Sorted by customer_id, timestamp, source_row (frame rows are in source_row order).
    order = used[np.lexsort((stamp[used].view(np.int64), customer[used]))]
    transactions = _typed(frame.iloc[order], [CUSTOMER_ID, TIMESTAMP, AMOUNT, SOURCE_ROW])
    transactions = transactions.reset_index(drop=True)
    aside_columns = [c for c in (*COLUMNS, CANCELLED, SOURCE_ROW) if c in frame.columns]
    set_aside_rows = _typed(frame[~open_rows], aside_columns).reset_index(drop=True)
    set_aside_rows[REASON] = pd.Series(reason[~open_rows], dtype=object)

    reasons = pd.Series(reason[~open_rows], dtype=object).value_counts()
    counts: dict[str, int] = {
        "rows_in": n,
        "rows_used": int(open_rows.sum()),
        **{f"set_aside_{r}": int(reasons.get(r, 0)) for r in REASONS},
        "customers_in": int(np.unique(customer[has_id]).size),
        "customers_used": int(customers_used),
        "exact_duplicates_kept": duplicates_kept,
        "negative_amount_rows": int((amount < 0).sum()),
        "zero_amount_rows": int((amount == 0).sum()),
    }
    if counts["rows_in"] != counts["rows_used"] + len(set_aside_rows):
        raise RuntimeError(f"rows_in != rows_used + set aside: {counts}")  # a bug here

    end = pd.Timestamp(end).normalize().as_unit("ns")
    _log_summary(counts, end)
    counts["warning_short_window"] = _warn_short_window(customer[used], day[used], end_day)
    return PreparedData(transactions, set_aside_rows, counts, end)
