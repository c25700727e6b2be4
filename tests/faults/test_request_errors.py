"""The pyfunc's request checks raise the contract error the server maps to a 400.

Before the fix, ``DataContractError`` was given a plain string: building its message
iterated the characters and raised AttributeError, a 500 for every negative amount or
empty request.
"""

from __future__ import annotations

import pandas as pd
import pytest

from clv_training.data.contract import DataContractError
from clv_training.serving import _as_frame, reject_negative_amounts


def test_negative_amounts_are_a_contract_error_naming_rows_and_the_param():
    frame = pd.DataFrame({"customer_id": ["a", "b", "c"],
                          "timestamp": ["2020-01-01"] * 3, "amount": [5.0, -1.0, -2.5]})
    with pytest.raises(DataContractError) as error:
        reject_negative_amounts(frame)
    text = str(error.value)
    assert "2 negative value(s)" in text
    assert "customer_id=b" in text and "customer_id=c" in text
    assert "allow_returns" in text
    assert [p.column for p in error.value.problems] == ["amount"]


@pytest.mark.parametrize("value, words", [(pd.DataFrame(), "no rows"),
                                          (5, "not a table")])
def test_empty_or_non_table_input_is_a_contract_error(value, words):
    with pytest.raises(DataContractError, match=words):
        _as_frame(value)


def test_input_example_skips_customers_with_returns_so_it_scores_with_default_params():
    from clv_training.serving import input_example

    tx = pd.DataFrame({
        "customer_id": ["a", "a", "b", "c", "c"],
        "timestamp": pd.to_datetime(["2020-01-01", "2020-01-01", "2020-01-02",
                                     "2020-01-03", "2020-02-03"]),
        "amount": [10.0, -2.0, 5.0, 7.0, 8.0],
    })
    example = input_example(tx, n_customers=5)
    assert sorted(example["customer_id"].unique()) == ["b", "c"]
    reject_negative_amounts(example)  # does not raise
    only_returns = input_example(tx[tx["customer_id"] == "a"])
    assert len(only_returns) == 2  # nothing else to show: the rows as they are


def test_a_binary_or_non_utf8_csv_is_one_contract_error(tmp_path):
    from clv_training.config import DataConfig
    from clv_training.data.load import read_raw

    path = tmp_path / "orders.csv"
    path.write_bytes(b"\x00\xff\xfe\x89PNG\r\n\x1a\n" * 50)
    with pytest.raises(DataContractError) as error:
        read_raw(DataConfig(name="x", source="file", path=str(path)))
    text = str(error.value)
    assert "cannot be read as csv text" in text and str(path) in text
    assert "data.format" in text
