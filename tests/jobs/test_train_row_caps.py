"""Row caps of the training job: seeded samples of example rows for big logs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clv_training.jobs import train as job
from clv_training.split import CutoffPlan
from tests.conftest import compose_train


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": [f"c{i:04d}" for i in range(n)],
                         "frequency": np.arange(n, dtype=float)}, index=np.arange(n) + 100)


def test_sample_rows_keeps_frame_at_or_below_cap():
    frame = _frame(10)
    assert job.sample_rows(frame, None, 0) is frame
    assert job.sample_rows(frame, 10, 0) is frame
    assert job.sample_rows(frame, 50, 0) is frame


def test_sample_rows_is_seeded_ordered_and_distinct():
    frame = _frame(1000)
    first = job.sample_rows(frame, 100, seed=7)
    again = job.sample_rows(frame, 100, seed=7)
    other = job.sample_rows(frame, 100, seed=8)
    assert len(first) == 100
    assert list(first.index) == list(range(100))
    pd.testing.assert_frame_equal(first, again)
    assert not first["frequency"].equals(other["frequency"])
    values = first["frequency"].to_numpy()
    assert np.all(np.diff(values) > 0)  # original order, no repeats
    assert set(values) <= set(frame["frequency"])


def test_sample_rows_refuses_a_cap_below_one():
    with pytest.raises(ValueError, match="row cap"):
        job.sample_rows(_frame(5), 0, 0)


def test_row_cap_takes_the_smallest_cap_that_is_set():
    assert job._row_cap(None, None) is None
    assert job._row_cap(200, None) == 200
    assert job._row_cap(None, 50) == 50
    assert job._row_cap(200, 50) == 50


def test_config_has_the_caps_and_cdnow_stays_below_them(tmp_path):
    cfg = compose_train([], tmp_path / "mlruns")
    assert cfg.tuning.max_train_rows == 200_000
    assert cfg.churn.max_train_rows == 500_000
    assert cfg.models.catboost.max_train_rows == 500_000
    assert cfg.models.sklearn.max_train_rows == 1_000_000
    assert cfg.models.btyd.max_train_rows is None
    assert cfg.models.formula.max_train_rows is None
    # CDNOW: 23,570 customers x at most 5 stacked cutoffs, below every cap.
    assert 23_570 * 5 < min(cfg.tuning.max_train_rows, cfg.churn.max_train_rows)


class _Recorder:
    """A stand-in model that remembers how many rows it was fitted on."""

    rows: list[int] = []

    def fit(self, X, y, **kwargs):
        assert len(X) == len(y)
        _Recorder.rows.append(len(X))
        return self


def _windows(n_customers: int) -> job.Windows:
    cutoffs = pd.to_datetime(["2020-01-01", "2020-04-01", "2020-07-01", "2020-10-01"])
    plan = CutoffPlan(test=cutoffs[3], validation=cutoffs[2], train=(cutoffs[0], cutoffs[1]),
                      observation_end=pd.Timestamp("2020-12-31"), horizon_days=91)
    frames = []
    for cutoff in cutoffs:
        frame = _frame(n_customers).reset_index(drop=True)
        frame.insert(1, "cutoff", cutoff)
        frame["target_spend"] = 1.0
        frame["calibration"] = False
        frames.append(frame)
    return job.Windows(plan=plan, examples=pd.concat(frames, ignore_index=True))


def test_fit_samples_under_the_family_cap_or_an_explicit_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(job, "make_model", lambda *a, **k: _Recorder())
    _Recorder.rows = []
    cfg = compose_train(["models.sklearn.max_train_rows=150"], tmp_path / "mlruns")
    windows = _windows(100)
    cutoffs = windows.plan.tuning_cutoffs  # 2 cutoffs x 100 rows
    job._fit("sklearn", {}, cfg, windows, cutoffs)
    job._fit("sklearn", {}, cfg, windows, cutoffs, max_rows=40)
    job._fit("formula", {}, cfg, windows, cutoffs)  # formula has no cap
    assert _Recorder.rows == [150, 40, 200]
