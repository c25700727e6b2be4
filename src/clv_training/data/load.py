"""Read a transaction log and map its columns onto the canonical names.

This module only reads: it maps the configured source columns onto ``customer_id``,
``timestamp``, ``amount`` (and optionally ``cancelled``), adds ``source_row`` and leaves
every judgement (types, dates, missing columns) to :mod:`clv_training.data.contract`, so
that all problems of a file are reported together in one error.

CSV and whitespace-delimited files are read with every column as text, so ids such as
``00001`` keep their leading zeros; Parquet columns arrive with their stored types.

A mapped column that is not in the file does not raise here. The frame returned by
:func:`read_raw` then lacks that canonical column and carries the details in
``DataFrame.attrs``:

``attrs["missing_columns"]``
    ``{config key: source column}`` for every mapped column that was not found, e.g.
    ``{"data.columns.amount": "price"}``.
``attrs["available_columns"]``
    the column names actually present in the file.
``attrs["column_mapping"]``
    ``{canonical name: source column}`` for the columns that were mapped.
``attrs["source"]``
    the file that was read (for messages).
"""

from __future__ import annotations

import importlib.metadata
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from clv_training.config import DataConfig
from clv_training.data import AMOUNT, CANCELLED, CUSTOMER_ID, SOURCE_ROW, TIMESTAMP
from clv_training.data.contract import DataContractError, Problem, normalise_customer_ids

logger = logging.getLogger(__name__)

LIFETIMES_DISTRIBUTION = "lifetimes"
LIFETIMES_DATASETS = "lifetimes/datasets/"
FORMATS = ("csv", "parquet", "whitespace")
_EXTENSION_FORMATS = {".csv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}


def locate_lifetimes_file(name: str) -> Path:
    """Find a data file shipped in the installed ``lifetimes`` distribution.

    The file is looked up in the distribution's record of installed files, so
    ``lifetimes`` itself is never imported (its import pulls in plotting and fitting code).

    Parameters
    ----------
    name : str
        File name inside ``lifetimes/datasets/``, e.g. ``"CDNOW_master.txt"``.

    Returns
    -------
    pathlib.Path
        Absolute path of the file.

    Raises
    ------
    FileNotFoundError
        When ``lifetimes`` is not installed or does not ship a file of that name; the
        message lists the data files it does ship.
    """
    try:
        dist = importlib.metadata.distribution(LIFETIMES_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(
            f"data.source=lifetimes needs the '{LIFETIMES_DISTRIBUTION}' distribution, "
            "which is not installed in this environment. Install the pinned requirements "
            "or set data.source=file data.path=<your file>."
        ) from exc

    shipped = {
        str(f)[len(LIFETIMES_DATASETS):]: f
        for f in (dist.files or [])
        if str(f).startswith(LIFETIMES_DATASETS) and not str(f).endswith(".py")
    }
    if name in shipped:
        path = Path(str(dist.locate_file(shipped[name]))).resolve()
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"lifetimes {dist.version} ships no data file '{name}' in {LIFETIMES_DATASETS}; "
        f"it ships: {sorted(shipped)}. Set data.file to one of them."
    )


def resolve_source(cfg: DataConfig, root: Path | None = None) -> Path:
    """Return the path of the file that ``cfg`` points at.

    Parameters
    ----------
    cfg : DataConfig
        ``source="lifetimes"`` uses ``cfg.file``; ``source="file"`` uses ``cfg.path``.
    root : pathlib.Path, optional
        Folder that a relative ``cfg.path`` is resolved against (default: the current
        working directory).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        Unknown ``source`` or the key it needs is not set.
    FileNotFoundError
        The file does not exist.
    """
    if cfg.source == "lifetimes":
        if not cfg.file:
            raise ValueError("data.source=lifetimes needs data.file (e.g. CDNOW_master.txt).")
        return locate_lifetimes_file(cfg.file)
    if cfg.source == "file":
        if not cfg.path:
            raise ValueError("data.source=file needs data.path=<CSV, Parquet or text file>.")
        path = Path(cfg.path).expanduser()
        if not path.is_absolute():
            path = (Path(root) if root is not None else Path.cwd()) / path
        if not path.is_file():
            raise FileNotFoundError(f"No transaction file at {path} (data.path={cfg.path}).")
        return path
    raise ValueError(f"Unknown data.source={cfg.source!r}; use 'lifetimes' or 'file'.")


def _file_format(cfg: DataConfig, path: Path) -> str:
    """Pick the reader: ``cfg.format`` or, when null, the file extension."""
    if cfg.format is not None:
        if cfg.format not in FORMATS:
            raise ValueError(f"Unknown data.format={cfg.format!r}; use one of {FORMATS}.")
        return cfg.format
    fmt = _EXTENSION_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"Cannot tell the format of {path.name} from its extension; "
            f"set data.format to one of {FORMATS}."
        )
    return fmt


def _read_text(path: Path, fmt: str, names: list[str] | None) -> pd.DataFrame:
    """Read a CSV or whitespace-delimited file with every column as text."""
    # Limitation: pandas' default NA tokens apply, so a CSV id written literally as "NA",
    # "NULL" or "None" reads as missing (and is set aside). Turning them off would make
    # real blanks and "nan" texts harder to catch; no real log we know of uses such ids.
    kwargs: dict = {
        "dtype": str,
        # index_col=False: never turn a leading column into the index when a row has
        # more fields than names (pandas would otherwise do so silently).
        "index_col": False,
    }
    if fmt == "whitespace":
        # Runs of spaces or tabs; leading blanks and CRLF line ends are handled too.
        kwargs["sep"] = r"\s+"
    if names is not None:
        kwargs["header"] = None
        kwargs["names"] = list(names)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            frame = pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        # A zero-byte file: no columns at all; the contract reports it as empty.
        return pd.DataFrame(columns=list(names) if names is not None else [])
    except (UnicodeDecodeError, pd.errors.ParserError) as error:
        # A binary file, another encoding or broken quoting: one contract error, not a
        # pandas traceback.
        raise DataContractError(
            [Problem(None, f"the input {path} cannot be read as {fmt} text: {error}",
                     "give a UTF-8 text file with a header line (or data.names), or set "
                     "data.format=parquet for a Parquet file")],
            str(path),
        ) from error
    for warning in caught:
        if issubclass(warning.category, pd.errors.ParserWarning):
            logger.warning(
                "%s: %s (data.names has %d names)",
                path.name,
                warning.message,
                len(names or []),
            )
    return frame


def _mapping(cfg: DataConfig) -> dict[str, tuple[str, str]]:
    """``{canonical name: (config key, source column)}`` for every mapped column."""
    cols = cfg.columns
    mapping = {
        CUSTOMER_ID: ("data.columns.customer_id", cols.customer_id),
        TIMESTAMP: ("data.columns.timestamp", cols.timestamp),
        AMOUNT: ("data.columns.amount", cols.amount),
    }
    if cols.cancelled is not None:
        mapping[CANCELLED] = ("data.columns.cancelled", cols.cancelled)
    return mapping


def map_columns(frame: pd.DataFrame, cfg: DataConfig, source: str = "") -> pd.DataFrame:
    """Select the mapped source columns under their canonical names and add ``source_row``.

    Parameters
    ----------
    frame : pandas.DataFrame
        Rows as read from the file, in file order.
    cfg : DataConfig
        ``cfg.columns`` names the source column of each canonical column.
    source : str, optional
        Where the rows came from, kept in ``attrs["source"]`` for error messages.

    Returns
    -------
    pandas.DataFrame
        The canonical columns that were found plus ``source_row`` (0-based data row, int64);
        missing mapped columns are listed in ``attrs["missing_columns"]``.
    """
    available = [str(c) for c in frame.columns]
    data: dict[str, pd.Series] = {}
    found: dict[str, str] = {}
    missing: dict[str, str] = {}
    for canonical, (key, column) in _mapping(cfg).items():
        if column in frame.columns:
            # Build a new frame rather than renaming, so that swapped names (e.g. a
            # source column called "amount" mapped to timestamp) cannot collide.
            data[canonical] = frame[column].reset_index(drop=True)
            found[canonical] = column
        else:
            missing[key] = column
    out = pd.DataFrame(data, index=pd.RangeIndex(len(frame)))
    out[SOURCE_ROW] = np.arange(len(frame), dtype=np.int64)
    out.attrs["missing_columns"] = missing
    out.attrs["available_columns"] = available
    out.attrs["column_mapping"] = found
    out.attrs["source"] = source
    return out


def _first_customers(raw: pd.DataFrame, max_customers: int) -> pd.DataFrame:
    """Keep every row of the first ``max_customers`` customer ids in sorted (text) order."""
    if max_customers < 1:
        raise ValueError(f"data.max_customers must be >= 1 or null, got {max_customers}.")
    if CUSTOMER_ID not in raw.columns:
        # The contract will report the missing column; nothing to select on.
        return raw
    # The same id rules as the contract, so "00001 " and "00001" are one customer.
    # Limitation: ids sort as text, so with numeric ids "10" comes before "9".
    ids = normalise_customer_ids(raw[CUSTOMER_ID])
    keep = sorted(set(ids.dropna()))[:max_customers]
    subset = raw[ids.isin(keep).to_numpy()].reset_index(drop=True)
    subset.attrs = dict(raw.attrs)
    logger.info(
        "data.max_customers=%d: kept %d of %d rows (first %d customer ids in sorted order)",
        max_customers,
        len(subset),
        len(raw),
        len(keep),
    )
    return subset


def read_raw(cfg: DataConfig, root: Path | None = None) -> pd.DataFrame:
    """Read the configured transaction log into canonical raw rows.

    Parameters
    ----------
    cfg : DataConfig
        Source (``lifetimes`` file or a path), format (csv | parquet | whitespace; null
        picks by extension: ``.csv``/``.txt`` csv, ``.parquet``/``.pq`` parquet), column
        names for header-less files, column mapping and ``max_customers``.
    root : pathlib.Path, optional
        Folder that a relative ``cfg.path`` is resolved against (default: current
        working directory).

    Returns
    -------
    pandas.DataFrame
        The mapped canonical columns, untouched (text for csv/whitespace, stored types for
        Parquet), plus ``source_row`` (0-based data row number in the file, int64). See the
        module docstring for the ``attrs`` that describe missing mapped columns.

    Raises
    ------
    FileNotFoundError, ValueError
        The file cannot be found or its format cannot be told. Problems with the contents
        are left to :func:`clv_training.data.contract.prepare_transactions`.

    Notes
    -----
    ``source_row`` counts data rows, not file lines: with a header line, line
    ``source_row + 2`` of the file (1-based) holds the row.
    """
    path = resolve_source(cfg, root)
    fmt = _file_format(cfg, path)
    if fmt == "parquet":
        frame = pd.read_parquet(path)
        if cfg.names is not None:
            logger.warning("data.names is ignored for Parquet files (%s)", path.name)
    else:
        frame = _read_text(path, fmt, cfg.names)
    logger.info("Read %d rows x %d columns from %s (%s)", *frame.shape, path, fmt)

    raw = map_columns(frame, cfg, source=str(path))
    if cfg.max_customers is not None:
        raw = _first_customers(raw, cfg.max_customers)
    return raw
