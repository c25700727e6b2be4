"""Reading transaction logs: sources, formats, column mapping, exact ids, smoke subsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from clv_training.config import ColumnsConfig, DataConfig
from clv_training.data import AMOUNT, CUSTOMER_ID, SOURCE_ROW, TIMESTAMP
from clv_training.data.contract import DataContractError, PreparedData, prepare_transactions
from clv_training.data.load import locate_lifetimes_file, read_raw

CONF_DATA = Path(__file__).resolve().parents[2] / "conf" / "data"


def data_config(name: str) -> DataConfig:
    """The DataConfig of conf/data/<name>.yaml, typed by the structured schema."""
    merged = OmegaConf.merge(
        OmegaConf.structured(DataConfig), OmegaConf.load(CONF_DATA / f"{name}.yaml")
    )
    return OmegaConf.to_object(merged)


def csv_config(path: Path, **kwargs) -> DataConfig:
    return DataConfig(name="test", source="file", path=str(path), **kwargs)


def assert_invariant(prepared: PreparedData) -> None:
    counts = prepared.counts
    assert counts["rows_in"] == counts["rows_used"] + len(prepared.set_aside)
    assert counts["rows_used"] == len(prepared.transactions)
    by_reason = prepared.set_aside["reason"].value_counts().to_dict()
    for key, value in counts.items():
        if key.startswith("set_aside_"):
            assert by_reason.get(key.removeprefix("set_aside_"), 0) == value


def test_locate_lifetimes_file_finds_the_shipped_cdnow_master():
    path = locate_lifetimes_file("CDNOW_master.txt")
    assert path.is_file()
    assert path.parent.name == "datasets"
    assert path.parent.parent.name == "lifetimes"


def test_locate_lifetimes_file_names_the_shipped_files_when_absent():
    with pytest.raises(FileNotFoundError, match="CDNOW_sample.txt") as info:
        locate_lifetimes_file("no_such_file.txt")
    assert "no_such_file.txt" in str(info.value)
    assert "data.file" in str(info.value)


def test_cdnow_master_loads_with_published_counts():
    cfg = data_config("cdnow")
    raw = read_raw(cfg)
    assert len(raw) == 69_659
    assert raw[CUSTOMER_ID].iloc[0] == "00001"
    assert raw[SOURCE_ROW].tolist()[:3] == [0, 1, 2]

    prepared = prepare_transactions(raw, cfg)
    assert_invariant(prepared)
    counts = prepared.counts
    assert counts["rows_in"] == 69_659
    assert counts["customers_in"] == 23_570
    assert counts["set_aside_after_observation_end"] == 0
    # Days whose only rows are $0.00 are set aside under the positive_net policy.
    assert counts["zero_amount_rows"] == 80
    assert counts["set_aside_nonpositive_net_day"] == 80
    tx = prepared.transactions
    assert tx[TIMESTAMP].min() == pd.Timestamp("1997-01-01")
    assert tx[TIMESTAMP].max() == pd.Timestamp("1998-06-30")
    assert prepared.observation_end == pd.Timestamp("1998-06-30")
    assert tx[CUSTOMER_ID].iloc[0] == "00001"
    assert tx[AMOUNT].iloc[0] == pytest.approx(11.77)


def test_cdnow_sample_loads_without_header():
    cfg = data_config("cdnow_sample")
    prepared = prepare_transactions(read_raw(cfg), cfg)
    assert_invariant(prepared)
    assert prepared.counts["rows_in"] == 6_919
    assert prepared.counts["customers_in"] == 2_357
    assert prepared.transactions[CUSTOMER_ID].iloc[0] == "00004"
    assert prepared.transactions[TIMESTAMP].min() == pd.Timestamp("1997-01-01")


def test_ids_keep_leading_zeros_and_lose_surrounding_blanks(tmp_path):
    path = tmp_path / "tx.csv"
    path.write_text(
        "customer_id,timestamp,amount\n"
        "00001,2020-01-01,10\n"
        " 00001 ,2020-02-01,5\n"
        "007,2020-01-03,1.5\n"
        "1e3,2020-01-04,2\n"
    )
    cfg = csv_config(path)
    raw = read_raw(cfg)
    assert raw[CUSTOMER_ID].tolist() == ["00001", " 00001 ", "007", "1e3"]

    prepared = prepare_transactions(raw, cfg)
    assert_invariant(prepared)
    tx = prepared.transactions
    assert sorted(tx[CUSTOMER_ID].unique()) == ["00001", "007", "1e3"]
    assert tx[CUSTOMER_ID].dtype == object
    assert all(type(v) is str for v in tx[CUSTOMER_ID])
    assert (tx[CUSTOMER_ID] == "00001").sum() == 2


def test_whitespace_file_with_crlf_and_names(tmp_path):
    path = tmp_path / "log.txt"
    path.write_bytes(
        b" 00010 A 20200101  1  10.50\r\n"
        b" 00011 B 20200103  2  -3.25\r\n"
        b" 00011 B 20200104  1  7.00\r\n"
    )
    cfg = DataConfig(
        name="t",
        path=str(path),
        format="whitespace",
        names=["cust", "sample", "day", "n", "value"],
        columns=ColumnsConfig(customer_id="cust", timestamp="day", amount="value"),
        date_format="%Y%m%d",
    )
    raw = read_raw(cfg)
    assert list(raw.columns) == [CUSTOMER_ID, TIMESTAMP, AMOUNT, SOURCE_ROW]
    # CRLF: the last column carries no "\r".
    assert raw[AMOUNT].tolist() == ["10.50", "-3.25", "7.00"]
    assert raw[CUSTOMER_ID].tolist() == ["00010", "00011", "00011"]

    prepared = prepare_transactions(raw, cfg)
    assert_invariant(prepared)
    assert prepared.transactions[AMOUNT].tolist() == [10.5, 7.0]
    assert prepared.counts["set_aside_nonpositive_net_day"] == 1


def test_parquet_columns_arrive_typed_and_format_follows_extension(tmp_path):
    path = tmp_path / "tx.parquet"
    pd.DataFrame(
        {
            "id": [3, 3, 12],
            "ts": pd.to_datetime(["2021-05-01 10:00", "2021-05-03 00:00", "2021-05-02 00:00"]),
            "value": [1.0, 2.5, 4.0],
            "ignored": ["x", "y", "z"],
        }
    ).to_parquet(path)
    cfg = csv_config(path, columns=ColumnsConfig(customer_id="id", timestamp="ts",
                                                 amount="value"))
    raw = read_raw(cfg)
    assert pd.api.types.is_integer_dtype(raw[CUSTOMER_ID])
    assert pd.api.types.is_datetime64_any_dtype(raw[TIMESTAMP])
    assert "ignored" not in raw.columns

    prepared = prepare_transactions(raw, cfg)
    assert_invariant(prepared)
    tx = prepared.transactions
    assert tx[CUSTOMER_ID].tolist() == ["12", "3", "3"]  # text order: "12" < "3"
    assert tx[TIMESTAMP].dtype == "datetime64[ns]"
    assert tx[AMOUNT].dtype == np.float64


def test_relative_path_is_resolved_against_root(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "tx.csv").write_text(
        "customer_id,timestamp,amount\na,2020-01-01,1\nb,2020-01-02,2\n"
    )
    raw = read_raw(csv_config(Path("sub/tx.csv")), root=tmp_path)
    assert len(raw) == 2
    with pytest.raises(FileNotFoundError, match="sub/nope.csv"):
        read_raw(csv_config(Path("sub/nope.csv")), root=tmp_path)


def test_unknown_extension_asks_for_data_format(tmp_path):
    path = tmp_path / "tx.dat"
    path.write_text("customer_id,timestamp,amount\n")
    with pytest.raises(ValueError, match="data.format"):
        read_raw(csv_config(path))


def test_missing_mapped_column_is_left_to_the_contract(tmp_path):
    path = tmp_path / "tx.csv"
    path.write_text("customer_id,timestamp,price\na,2020-01-01,1\nb,2020-01-02,2\n")
    cfg = csv_config(path)  # amount -> "amount", which the file does not have
    raw = read_raw(cfg)
    assert AMOUNT not in raw.columns
    assert raw.attrs["missing_columns"] == {"data.columns.amount": "amount"}
    assert raw.attrs["available_columns"] == ["customer_id", "timestamp", "price"]
    with pytest.raises(DataContractError, match=r"data\.columns\.amount"):
        prepare_transactions(raw, cfg)


def test_max_customers_keeps_every_row_of_the_first_ids(tmp_path):
    path = tmp_path / "tx.csv"
    path.write_text(
        "customer_id,timestamp,amount\n"
        "c,2020-01-01,1\n"
        "a,2020-01-02,2\n"
        "b,2020-01-03,3\n"
        "a,2020-01-04,4\n"
        ",2020-01-05,5\n"
    )
    cfg = csv_config(path, max_customers=2)
    raw = read_raw(cfg)
    assert raw[CUSTOMER_ID].tolist() == ["a", "b", "a"]
    assert raw[SOURCE_ROW].tolist() == [1, 2, 3]  # row numbers of the file are kept

    prepared = prepare_transactions(raw, cfg)
    assert_invariant(prepared)
    assert prepared.counts["rows_in"] == 3
    assert prepared.counts["customers_used"] == 2


def test_names_on_a_file_with_a_header_points_at_data_names(tmp_path):
    path = tmp_path / "tx.csv"
    path.write_text("customer_id,timestamp,amount\na,2020-01-01,1\nb,2020-01-02,2\n")
    cfg = csv_config(path, names=["customer_id", "timestamp", "amount"])
    raw = read_raw(cfg)
    assert raw[SOURCE_ROW].tolist() == [0, 1, 2]
    with pytest.raises(DataContractError) as info:
        prepare_transactions(raw, cfg)
    message = str(info.value)
    assert "source_row 0, customer_id 'customer_id', timestamp 'timestamp'" in message
    assert "set data.names=null" in message


def test_contract_error_survives_pickling(tmp_path):
    import pickle

    path = tmp_path / "tx.csv"
    path.write_text("customer_id,timestamp,amount\na,2020-01-01,x\nb,2020-01-02,2\n")
    cfg = csv_config(path)
    with pytest.raises(DataContractError) as info:
        prepare_transactions(read_raw(cfg), cfg)
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value)
    assert copy.problems == info.value.problems
