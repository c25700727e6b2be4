"""The data contract: set-aside rules, counts, time zones and errors people can act on."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clv_training.config import ColumnsConfig, DataConfig
from clv_training.data import AMOUNT, CANCELLED, CUSTOMER_ID, SOURCE_ROW, TIMESTAMP
from clv_training.data.contract import (
    REASONS,
    DataContractError,
    PreparedData,
    prepare_transactions,
    validate_transactions_frame,
)
from clv_training.data.load import read_raw

HEADER = "customer_id,timestamp,amount"


def write_csv(tmp_path: Path, lines: list[str], header: str = HEADER) -> Path:
    path = tmp_path / "tx.csv"
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def config(path: Path, **kwargs) -> DataConfig:
    return DataConfig(name="test", source="file", path=str(path), **kwargs)


def load(tmp_path: Path, lines: list[str], header: str = HEADER, **kwargs) -> PreparedData:
    cfg = config(write_csv(tmp_path, lines, header), **kwargs)
    prepared = prepare_transactions(read_raw(cfg), cfg)
    assert_invariant(prepared)
    return prepared


def assert_invariant(prepared: PreparedData) -> None:
    counts = prepared.counts
    assert counts["rows_in"] == counts["rows_used"] + len(prepared.set_aside)
    assert counts["rows_used"] == len(prepared.transactions)
    by_reason = prepared.set_aside["reason"].value_counts().to_dict()
    assert {r: counts[f"set_aside_{r}"] for r in REASONS if counts[f"set_aside_{r}"]} == (
        by_reason
    )


def contract_error(tmp_path: Path, lines: list[str], header: str = HEADER, **kwargs) -> str:
    cfg = config(write_csv(tmp_path, lines, header), **kwargs)
    with pytest.raises(DataContractError) as info:
        prepare_transactions(read_raw(cfg), cfg)
    return str(info.value)


# -- DATA_CASES 2: exact duplicates ------------------------------------------------------

DUPLICATED = [
    "a,2020-01-01,10",
    "a,2020-01-01,10",  # exact copy of row 0
    "a,2020-01-01,12",  # same day, other amount: a basket line, not a copy
    "b,2020-01-02,5",
    "b,2020-01-02,5",  # copy of row 3
    "b,2020-01-02,5",  # copy of row 3
]


def test_exact_duplicates_are_counted_and_kept_by_default(tmp_path):
    prepared = load(tmp_path, DUPLICATED)
    assert prepared.counts["exact_duplicates_kept"] == 3
    assert prepared.counts["set_aside_exact_duplicate"] == 0
    assert prepared.counts["rows_used"] == 6


def test_exact_duplicates_dropped_set_aside_the_later_copies(tmp_path):
    prepared = load(tmp_path, DUPLICATED, duplicates="drop")
    assert prepared.counts["set_aside_exact_duplicate"] == 3
    assert prepared.counts["exact_duplicates_kept"] == 0
    assert prepared.set_aside[SOURCE_ROW].tolist() == [1, 4, 5]
    assert set(prepared.set_aside["reason"]) == {"exact_duplicate"}
    assert prepared.transactions[SOURCE_ROW].tolist() == [0, 2, 3]


# -- DATA_CASES 6/7: zero and negative amounts, net <= 0 days ----------------------------

MONEY = [
    "a,2020-01-01,10.10",
    "a,2020-01-01,-10.10",  # day nets to 0 -> both rows set aside
    "a,2020-01-05,0",  # a $0.00 day -> set aside
    "a,2020-01-09,20",
    "a,2020-01-09,-5",  # return on a positive day: kept, the day nets 15
    "b,2020-01-02,-3",  # a refund-only day -> set aside
    "b,2020-01-03,7",
]


def test_positive_net_policy_sets_aside_days_with_net_at_or_below_zero(tmp_path):
    prepared = load(tmp_path, MONEY)
    counts = prepared.counts
    assert counts["set_aside_nonpositive_net_day"] == 4
    assert prepared.set_aside[SOURCE_ROW].tolist() == [0, 1, 2, 5]
    assert counts["negative_amount_rows"] == 3
    assert counts["zero_amount_rows"] == 1
    tx = prepared.transactions
    assert tx[SOURCE_ROW].tolist() == [3, 4, 6]
    day_sums = tx.groupby([CUSTOMER_ID, tx[TIMESTAMP].dt.normalize()])[AMOUNT].sum()
    assert (day_sums > 0).all()
    assert day_sums.tolist() == [15.0, 7.0]


def test_any_policy_keeps_every_day_and_still_counts_amounts(tmp_path):
    prepared = load(tmp_path, MONEY, occasion_policy="any")
    assert prepared.counts["set_aside_nonpositive_net_day"] == 0
    assert prepared.counts["rows_used"] == 7
    assert prepared.counts["negative_amount_rows"] == 3
    assert prepared.counts["zero_amount_rows"] == 1
    assert prepared.set_aside.empty
    assert list(prepared.set_aside.columns) == [CUSTOMER_ID, TIMESTAMP, AMOUNT, SOURCE_ROW,
                                                "reason"]


# -- DATA_CASES 9: missing customer ids ----------------------------------------------------


def test_missing_ids_are_set_aside_never_a_customer_named_nan(tmp_path):
    prepared = load(
        tmp_path,
        [
            "a,2020-01-01,1",
            ",2020-01-02,2",  # empty
            "   ,2020-01-03,3",  # blank
            "nan,2020-01-04,4",  # what str(NaN) writes
            "None,2020-01-05,5",
            "b,2020-01-06,6",
        ],
    )
    assert prepared.counts["set_aside_missing_customer_id"] == 4
    assert prepared.set_aside[SOURCE_ROW].tolist() == [1, 2, 3, 4]
    assert prepared.set_aside[CUSTOMER_ID].isna().all()
    ids = set(prepared.transactions[CUSTOMER_ID])
    assert ids == {"a", "b"}
    assert prepared.counts["customers_in"] == 2


def test_missing_ids_in_a_typed_frame(tmp_path):
    cfg = DataConfig(name="t")
    raw = pd.DataFrame(
        {
            # None, NaN and pd.NA, and the texts a null becomes after .astype(str).
            CUSTOMER_ID: ["a", None, np.nan, pd.NA, "nan", "<NA>", " None ", "b"],
            TIMESTAMP: pd.to_datetime(["2020-01-01"] * 8),
            AMOUNT: [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        },
        dtype=object,
    )
    prepared = prepare_transactions(raw, cfg)
    assert_invariant(prepared)
    assert prepared.counts["set_aside_missing_customer_id"] == 6
    assert prepared.set_aside[SOURCE_ROW].tolist() == [1, 2, 3, 4, 5, 6]
    assert set(prepared.transactions[CUSTOMER_ID]) == {"a", "b"}


# -- DATA_CASES 10: observation end --------------------------------------------------------

LATE = [
    "a,2020-01-01,1",
    "a,2020-01-10 18:00,2",
    "b,2020-01-05,3",
    ",2020-03-01,4",  # no id: it must not move the default end
]


def test_default_observation_end_is_the_last_transaction_day_of_rows_with_ids(tmp_path):
    prepared = load(tmp_path, LATE)
    assert prepared.observation_end == pd.Timestamp("2020-01-10")
    assert prepared.counts["set_aside_after_observation_end"] == 0
    assert prepared.counts["set_aside_missing_customer_id"] == 1


def test_rows_after_the_observation_end_are_set_aside_and_the_argument_wins(tmp_path):
    prepared = load(tmp_path, LATE, observation_end="2020-01-09")
    assert prepared.observation_end == pd.Timestamp("2020-01-09")
    assert prepared.counts["set_aside_after_observation_end"] == 1
    assert prepared.set_aside.set_index(SOURCE_ROW).loc[1, "reason"] == "after_observation_end"

    # A row on the end day itself is inside the window, whatever its time of day.
    cfg = config(tmp_path / "tx.csv", observation_end="2020-01-09")
    override = prepare_transactions(read_raw(cfg), cfg, observation_end="2020-01-10")
    assert_invariant(override)
    assert override.observation_end == pd.Timestamp("2020-01-10")
    assert override.counts["set_aside_after_observation_end"] == 0


def test_cancelled_rows_are_set_aside_before_other_rules(tmp_path):
    prepared = load(
        tmp_path,
        ["a,2020-01-01,5,no", "a,2020-01-02,5,TRUE", "b,2020-01-03,4,", "b,2020-01-04,-4,1"],
        header=HEADER + ",is_cancelled",
        columns=ColumnsConfig(cancelled="is_cancelled"),
    )
    assert prepared.counts["set_aside_cancelled"] == 2
    assert prepared.set_aside["reason"].tolist() == ["cancelled", "cancelled"]
    assert prepared.set_aside[CANCELLED].tolist() == [True, True]
    assert prepared.transactions[SOURCE_ROW].tolist() == [0, 2]
    assert CANCELLED not in prepared.transactions.columns


# -- DATA_CASES 16: one error that lists every problem ---------------------------------------


def test_every_problem_is_listed_in_one_error_with_rows_ids_and_config_keys(tmp_path):
    message = contract_error(
        tmp_path,
        [
            "00001,1997-01-01,10",
            "00002,01/02/1997,abc",
            "00003,not a date,7",
            "00004,1997-01-04,12;50",
            "00005,1997-01-05,inf",
            "00006,1997-01-06,",
        ],
        header="cust,date,amount,extra",
        columns=ColumnsConfig(customer_id="cust", timestamp="date", amount="amount",
                              cancelled="flag"),
    )
    # Wrong mapping: the config key and the columns that are there.
    assert "'flag' (data.columns.cancelled) is not in the input" in message
    assert "columns present: 'cust', 'date', 'amount', 'extra'" in message
    # Unparsable dates: rows, values, customer ids and the config key.
    assert "2 of 6 rows have a timestamp that cannot be parsed" in message
    assert "source_row 1, customer_id '00002', timestamp '01/02/1997'" in message
    assert "source_row 2, customer_id '00003', timestamp 'not a date'" in message
    assert "set data.date_format=" in message
    # Wrong types: non-numeric, infinite and missing amounts, each with its rows.
    assert "2 of 6 rows have an amount that is not a number" in message
    assert "source_row 3, customer_id '00004', amount '12;50'" in message
    assert "set data.columns.amount=" in message
    assert "source_row 4, customer_id '00005', amount 'inf'" in message
    assert "1 of 6 rows have no amount" in message
    assert "(5 problems)" in message
    assert message.count("fix:") == 5


def test_error_quotes_at_most_five_rows_per_problem(tmp_path):
    lines = [f"c{i},2020-13-{i:02d},1" for i in range(1, 9)]
    message = contract_error(tmp_path, lines)
    assert "8 of 8 rows have a timestamp that cannot be parsed" in message
    assert "source_row 4," in message
    assert "source_row 5," not in message


def test_wrong_mapping_names_the_key_and_reports_other_columns_too(tmp_path):
    message = contract_error(
        tmp_path, ["a,2020-01-01,1", "b,yesterday,2"], header="customer,timestamp,amount"
    )
    assert "'customer_id' (data.columns.customer_id) is not in the input" in message
    assert "set data.columns.customer_id=<one of the columns present>" in message
    assert "source_row 1, timestamp 'yesterday'" in message
    assert "(2 problems)" in message


def test_semicolon_file_read_as_one_column_hints_at_the_separator(tmp_path):
    message = contract_error(tmp_path, ["a;2020-01-01;1"], header="customer_id;timestamp;amount")
    assert message.count("is not in the input") == 3
    assert "separator" in message


def test_empty_file_and_header_only_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    cfg = config(path)
    with pytest.raises(DataContractError) as info:
        prepare_transactions(read_raw(cfg), cfg)
    assert "(1 problem)" in str(info.value)
    assert "has no data rows" in str(info.value)
    assert "data.path" in str(info.value)

    assert "has no data rows" in contract_error(tmp_path, [])


def test_a_file_with_one_customer(tmp_path):
    message = contract_error(tmp_path, ["00007,2020-01-01,1", "00007,2020-02-01,2"])
    assert "1 distinct customer id(s) left after setting rows aside ('00007')" in message
    assert "data.columns.customer_id" in message


def test_one_customer_is_reported_with_the_other_problems(tmp_path):
    message = contract_error(tmp_path, ["00007,2020-01-01,x", "00007,2020-02-01,2"])
    assert "not a number" in message
    assert "1 distinct customer id(s) in the input ('00007')" in message


def test_one_customer_left_after_set_aside(tmp_path):
    message = contract_error(
        tmp_path, ["a,2020-01-01,1", "b,2020-01-02,0"], observation_end="2020-01-01"
    )
    assert "1 distinct customer id(s) left after setting rows aside ('a')" in message


def test_date_format_from_config_parses_and_the_wrong_one_is_reported(tmp_path):
    prepared = load(tmp_path, ["a,02/01/2020,1", "b,13/01/2020,2"], date_format="%d/%m/%Y")
    assert prepared.transactions[TIMESTAMP].tolist() == [
        pd.Timestamp("2020-01-02"),
        pd.Timestamp("2020-01-13"),
    ]
    message = contract_error(tmp_path, ["a,2020-01-02,1", "b,2020-01-13,2"],
                             date_format="%d/%m/%Y")
    assert "now '%d/%m/%Y'" in message
    assert "2 of 2 rows" in message


def test_bad_policy_values_and_time_zone_are_reported(tmp_path):
    message = contract_error(
        tmp_path, ["a,2020-01-01,1", "b,2020-01-02,2"],
        duplicates="remove", occasion_policy="net", timezone="Mars/Olympus",
    )
    assert "set data.duplicates to one of ('keep', 'drop')" in message
    assert "set data.occasion_policy to one of ('positive_net', 'any')" in message
    assert "unknown time zone 'Mars/Olympus'" in message
    assert "set data.timezone" in message


# -- time zones ------------------------------------------------------------------------------


def test_aware_timestamps_are_converted_to_the_configured_zone(tmp_path):
    lines = [
        "a,2020-01-01T23:30:00-05:00,1",  # 04:30 UTC next day
        "a,2020-01-01T23:30:00+00:00,2",
        "b,2020-01-01 08:00:00,3",  # naive: taken as already in the zone
    ]
    utc = load(tmp_path, lines)
    by_row = utc.transactions.set_index(SOURCE_ROW)[TIMESTAMP]
    assert by_row[0] == pd.Timestamp("2020-01-02 04:30")
    assert by_row[1] == pd.Timestamp("2020-01-01 23:30")
    assert by_row[2] == pd.Timestamp("2020-01-01 08:00")
    assert utc.transactions[TIMESTAMP].dtype == "datetime64[ns]"

    tokyo = load(tmp_path, lines, timezone="Asia/Tokyo")
    by_row = tokyo.transactions.set_index(SOURCE_ROW)[TIMESTAMP]
    assert by_row[0] == pd.Timestamp("2020-01-02 13:30")
    assert by_row[1] == pd.Timestamp("2020-01-02 08:30")
    assert by_row[2] == pd.Timestamp("2020-01-01 08:00")


def test_aware_parquet_timestamps_are_converted(tmp_path):
    path = tmp_path / "tx.parquet"
    pd.DataFrame(
        {
            CUSTOMER_ID: ["a", "b"],
            TIMESTAMP: pd.to_datetime(["2020-06-30 23:00", "2020-06-01 12:00"]).tz_localize(
                "UTC"
            ),
            AMOUNT: [1.0, 2.0],
        }
    ).to_parquet(path)
    cfg = config(path, timezone="Europe/Berlin")
    prepared = prepare_transactions(read_raw(cfg), cfg)
    assert_invariant(prepared)
    assert prepared.transactions[TIMESTAMP].tolist() == [
        pd.Timestamp("2020-07-01 01:00"),
        pd.Timestamp("2020-06-01 14:00"),
    ]
    assert prepared.observation_end == pd.Timestamp("2020-07-01")


# -- output shape, logging, warnings -----------------------------------------------------------


def test_transactions_are_sorted_and_typed(tmp_path):
    prepared = load(
        tmp_path, ["b,2020-01-02,1", "a,2020-01-03,2", "a,2020-01-01,3", "a,2020-01-01,4"]
    )
    tx = prepared.transactions
    assert list(tx.columns) == [CUSTOMER_ID, TIMESTAMP, AMOUNT, SOURCE_ROW]
    assert tx[SOURCE_ROW].tolist() == [2, 3, 1, 0]
    assert tx.dtypes.to_dict() == {
        CUSTOMER_ID: np.dtype(object),
        TIMESTAMP: np.dtype("datetime64[ns]"),
        AMOUNT: np.dtype("float64"),
        SOURCE_ROW: np.dtype("int64"),
    }
    assert all(isinstance(v, int) for v in prepared.counts.values())
    assert set(prepared.counts) >= {f"set_aside_{r}" for r in REASONS} | {
        "rows_in", "rows_used", "customers_in", "customers_used", "exact_duplicates_kept",
        "negative_amount_rows", "zero_amount_rows",
    }


def test_counts_are_logged_in_one_summary(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="clv_training.data.contract"):
        load(tmp_path, ["a,2020-01-01,1", ",2020-01-02,2", "b,2020-01-03,3"])
    summaries = [r.getMessage() for r in caplog.records if "rows in" in r.getMessage()]
    assert len(summaries) == 1
    assert "3 rows in, 2 used, 1 set aside" in summaries[0]
    assert "missing_customer_id 1" in summaries[0]


def test_short_window_against_inter_occasion_time_warns(tmp_path, caplog):
    # Repeat buyers come back every 30 days; the window is 60 days < 3 x 30.
    lines = ["a,2020-01-01,1", "a,2020-01-31,1", "b,2020-01-31,1", "b,2020-03-01,1"]
    with caplog.at_level(logging.WARNING, logger="clv_training.data.contract"):
        prepared = load(tmp_path, lines)
    assert any("churn estimates are unreliable" in r.getMessage() for r in caplog.records)
    assert prepared.counts["warning_short_window"] == 1  # reaches the run as a rows.* tag

    caplog.clear()
    long_lines = lines + ["c,2020-01-01,1", "c,2020-12-31,1"]
    with caplog.at_level(logging.WARNING, logger="clv_training.data.contract"):
        prepared = load(tmp_path, long_lines)
    assert not any("unreliable" in r.getMessage() for r in caplog.records)
    assert prepared.counts["warning_short_window"] == 0


# -- the serving path ----------------------------------------------------------------------------


def test_validate_transactions_frame_allows_returns_and_rejects_nan_amounts():
    ok = validate_transactions_frame(
        pd.DataFrame(
            {
                CUSTOMER_ID: ["a", "b"],
                TIMESTAMP: ["2020-01-01T10:00:00+02:00", "2020-01-02T10:00:00+02:00"],
                AMOUNT: [5.0, -2.5],
            }
        )
    )
    assert ok[AMOUNT].tolist() == [5.0, -2.5]
    assert ok[TIMESTAMP].tolist()[0] == pd.Timestamp("2020-01-01 08:00")
    assert ok[SOURCE_ROW].tolist() == [0, 1]

    with pytest.raises(DataContractError) as info:
        validate_transactions_frame(
            pd.DataFrame({CUSTOMER_ID: ["a", "b"], TIMESTAMP: ["2020-01-01", "bad"],
                          AMOUNT: [np.nan, 1.0]})
        )
    message = str(info.value)
    assert "1 of 2 rows have no amount" in message
    assert "source_row 0, customer_id 'a', amount <empty>" in message
    assert "send ISO-8601 timestamps" in message
    assert "data." not in message  # no config keys on the serving path


def test_validate_transactions_frame_names_the_missing_column():
    with pytest.raises(DataContractError, match="send a column named 'amount'") as info:
        validate_transactions_frame(pd.DataFrame({CUSTOMER_ID: ["a"], TIMESTAMP: ["2020-01-01"],
                                                  "spend": [1.0]}))
    assert "columns present: 'customer_id', 'timestamp', 'spend'" in str(info.value)


def test_amounts_too_large_for_exact_sums_and_out_of_range_days_are_contract_errors():
    frame = pd.DataFrame({CUSTOMER_ID: ["a", "b"], TIMESTAMP: ["2020-01-01", "2020-01-02"],
                          AMOUNT: [1e308, 5.0]})
    with pytest.raises(DataContractError, match="1e\\+15 or more") as info:
        validate_transactions_frame(frame)
    assert "customer_id 'a'" in str(info.value)
    cfg = DataConfig(name="x")
    typed = validate_transactions_frame(frame.assign(**{AMOUNT: [1.0, 5.0]}))
    with pytest.raises(DataContractError, match="between 1677 and 2262"):
        prepare_transactions(typed, cfg, observation_end="9999-01-01")
