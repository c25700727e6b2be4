"""Content digests that tag every training run."""

from __future__ import annotations

import pandas as pd

from clv_training.tracking import data_digest, frame_digest


def _examples() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": ["b", "a", "a"],
            "cutoff": pd.to_datetime(["2020-01-01", "2020-01-01", "2020-02-01"]),
            "frequency": [1.0, 0.0, 2.0],
        }
    )


def test_frame_digest_ignores_row_order_but_not_values_or_names():
    base = frame_digest(_examples(), ["cutoff", "customer_id"])
    shuffled = _examples().iloc[[2, 0, 1]]
    assert frame_digest(shuffled, ["cutoff", "customer_id"]) == base

    changed = _examples()
    changed.loc[0, "frequency"] = 1.0000001
    assert frame_digest(changed, ["cutoff", "customer_id"]) != base
    renamed = _examples().rename(columns={"frequency": "recency"})
    assert frame_digest(renamed, ["cutoff", "customer_id"]) != base
    assert len(base) == 16


def test_data_digest_ignores_row_order():
    rows = pd.DataFrame(
        {
            "customer_id": ["1", "2", "1"],
            "timestamp": pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03"]),
            "amount": [1.0, 2.0, 3.0],
        }
    )
    assert data_digest(rows) == data_digest(rows.iloc[::-1])
    assert data_digest(rows) != data_digest(rows.assign(amount=[1.0, 2.0, 3.5]))
