"""Cutoffs, target windows, examples and held-out customers.

A cutoff splits a customer's history into what a model may see (days <= cutoff) and what
it must predict (days in ``(cutoff, cutoff + horizon]``). :func:`plan_cutoffs` places the
test, validation and training cutoffs so that every target window ends by the observation
end; :func:`make_examples` turns cutoffs into training rows; and
:func:`is_calibration_customer` picks the customers held out for calibration, the same
ones at every cutoff.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clv_training.config import FeaturesConfig, SplitConfig
from clv_training.data import CUSTOMER_ID, TIMESTAMP
from clv_training.features.build import (
    TARGET_OCCASIONS,
    TARGET_SPEND,
    ExtraFeatures,
    build_features,
    build_targets,
    select_rows,
)
from clv_training.features.engine import open_engine

logger = logging.getLogger(__name__)

CUTOFF = "cutoff"


@dataclass(frozen=True)
class CutoffPlan:
    """Where the cutoffs of one training job fall.

    Attributes
    ----------
    test : pandas.Timestamp
        ``observation_end - horizon_days``; its target window ends at the observation end.
    validation : pandas.Timestamp
        One step before ``test``; scores tuning and model choice.
    train : tuple of pandas.Timestamp
        Earlier cutoffs, one step apart, ascending.
    observation_end : pandas.Timestamp
        Last observed day.
    horizon_days : int
        Length of every target window.
    """

    test: pd.Timestamp
    validation: pd.Timestamp
    train: tuple[pd.Timestamp, ...]
    observation_end: pd.Timestamp
    horizon_days: int

    @property
    def tuning_cutoffs(self) -> tuple[pd.Timestamp, ...]:
        """Training cutoffs of the tuning fit (scored on ``validation``), ascending."""
        return tuple(sorted(self.train))

    @property
    def test_fit_cutoffs(self) -> tuple[pd.Timestamp, ...]:
        """Training cutoffs of the test fit (scored on ``test``), ascending."""
        return tuple(sorted((*self.train, self.validation)))

    @property
    def final_cutoffs(self) -> tuple[pd.Timestamp, ...]:
        """Training cutoffs of the final (registered) fit, ascending."""
        return tuple(sorted((*self.train, self.validation, self.test)))


def _day(value: pd.Timestamp | str, name: str) -> pd.Timestamp:
    """Return ``value`` as a naive day."""
    ts = pd.Timestamp(value)
    if ts.tzinfo is not None:
        raise ValueError(f"{name} must be a naive date, got {ts!r}")
    return ts.normalize()


def plan_cutoffs(
    first_day: pd.Timestamp,
    observation_end: pd.Timestamp,
    horizon_days: int,
    cfg: SplitConfig,
) -> CutoffPlan:
    """Place the test, validation and training cutoffs.

    Parameters
    ----------
    first_day : pandas.Timestamp
        Day of the first transaction in the log.
    observation_end : pandas.Timestamp
        Last observed day.
    horizon_days : int
        Length of each target window in days.
    cfg : SplitConfig
        ``step_days`` (null: ``horizon_days``), ``max_train_cutoffs`` and
        ``min_history_days``.

    Returns
    -------
    CutoffPlan
        ``test = observation_end - horizon``, ``validation = test - horizon`` (its target
        window ends where the test window starts) and up to ``max_train_cutoffs``
        training cutoffs ``validation - horizon - k * step`` (k = 0, 1, ...), whose target
        windows end on or before the validation cutoff, each leaving at least
        ``min_history_days`` since ``first_day``. A step shorter than the horizon stacks
        overlapping training windows; it never lets a label cross into validation or
        test.

    Raises
    ------
    ValueError
        If a setting is not positive, or if not even one training cutoff fits.

    Examples
    --------
    >>> plan = plan_cutoffs(pd.Timestamp("1997-01-01"), pd.Timestamp("1998-06-30"), 91,
    ...                     SplitConfig())
    >>> [str(c.date()) for c in plan.final_cutoffs]
    ['1997-04-01', '1997-07-01', '1997-09-30', '1997-12-30', '1998-03-31']
    """
    first_day = _day(first_day, "first_day")
    observation_end = _day(observation_end, "observation_end")
    horizon_days = int(horizon_days)
    step_days = int(cfg.step_days) if cfg.step_days is not None else horizon_days
    if horizon_days <= 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    if step_days <= 0:
        raise ValueError(f"split.step_days must be positive or null, got {cfg.step_days}")
    if cfg.max_train_cutoffs < 1:
        raise ValueError(
            f"split.max_train_cutoffs must be at least 1, got {cfg.max_train_cutoffs}"
        )
    if cfg.min_history_days < 0:
        raise ValueError(
            f"split.min_history_days must be >= 0, got {cfg.min_history_days}"
        )

    horizon = pd.Timedelta(days=horizon_days)
    step = pd.Timedelta(days=step_days)
    earliest = first_day + pd.Timedelta(days=int(cfg.min_history_days))
    test = observation_end - horizon
    validation = test - horizon
    train = []
    for k in range(int(cfg.max_train_cutoffs)):
        cutoff = validation - horizon - k * step
        if cutoff < earliest:
            break
        train.append(cutoff)

    if not train:
        needed = 3 * horizon_days + int(cfg.min_history_days)
        span = (observation_end - first_day).days
        raise ValueError(
            f"no training cutoff fits: with horizon_days={horizon_days} and a step of "
            f"{step_days} days, test={test.date()} and validation={validation.date()}, so "
            f"the first training cutoff would be {(validation - horizon).date()}, before "
            f"{earliest.date()} (first day {first_day.date()} + split.min_history_days="
            f"{cfg.min_history_days}). The log spans {span} days from {first_day.date()} "
            f"to {observation_end.date()}; it needs at least {needed}. Lower horizon_days, "
            "split.step_days or split.min_history_days, or use a longer log."
        )
    plan = CutoffPlan(
        test=test,
        validation=validation,
        train=tuple(sorted(train)),
        observation_end=observation_end,
        horizon_days=horizon_days,
    )
    logger.info(
        "cutoffs: train %s, validation %s, test %s (horizon %d days, observation end %s)",
        [str(c.date()) for c in plan.train],
        validation.date(),
        test.date(),
        horizon_days,
        observation_end.date(),
    )
    return plan


def make_examples(
    transactions: pd.DataFrame,
    cutoffs: Iterable[pd.Timestamp],
    horizon_days: int,
    cfg: FeaturesConfig,
    *,
    extra: ExtraFeatures | None = None,
) -> pd.DataFrame:
    """Stack features and targets for several cutoffs.

    Parameters
    ----------
    transactions : pandas.DataFrame
        Prepared transactions (``customer_id``, ``timestamp``, ``amount``).
    cutoffs : iterable of pandas.Timestamp
        Cutoffs; duplicates are dropped and the output is ordered by cutoff.
    horizon_days : int
        Target window ``(cutoff, cutoff + horizon_days]``.
    cfg : FeaturesConfig
        Feature settings (see :func:`clv_training.features.build.build_features`).
    extra : callable, optional
        Extra-feature hook passed on to ``build_features``.

    Returns
    -------
    pandas.DataFrame
        One row per (cutoff, customer who bought by the cutoff), with columns
        ``customer_id``, ``cutoff`` (datetime64[ns]), the feature columns, then
        ``target_spend`` and ``target_occasions`` (0 for customers without a purchase in
        the window). Features use only days <= cutoff; targets only days in the window.
    """
    days = sorted({_day(c, "cutoff") for c in cutoffs})
    if not days:
        raise ValueError("make_examples needs at least one cutoff")
    last_day = transactions[TIMESTAMP].max() if len(transactions) else None
    horizon = pd.Timedelta(days=int(horizon_days))

    frames = []
    # One engine and one copy of the rows on it for every cutoff.
    engine = open_engine(cfg)
    try:
        rows = engine.table(select_rows(transactions))
        for cutoff in days:
            if last_day is not None and cutoff + horizon > _day(last_day, "timestamp"):
                logger.warning(
                    "target window (%s, %s] ends after the last transaction day %s: "
                    "targets are cut short",
                    cutoff.date(),
                    (cutoff + horizon).date(),
                    _day(last_day, "timestamp").date(),
                )
            features = build_features(rows, cutoff, cfg, extra=extra, engine=engine)
            targets = build_targets(rows, cutoff, int(horizon_days), engine=engine)
            examples = features.join(targets, how="left")
            examples[[TARGET_SPEND, TARGET_OCCASIONS]] = examples[
                [TARGET_SPEND, TARGET_OCCASIONS]
            ].fillna(0.0)
            examples = examples.reset_index()
            examples.insert(1, CUTOFF, cutoff)
            frames.append(examples)
            logger.info(
                "examples at %s: %d customers, %d with a purchase in the next %d days",
                cutoff.date(),
                len(examples),
                int((examples[TARGET_OCCASIONS] > 0).sum()),
                int(horizon_days),
            )
    finally:
        engine.close()

    stacked = pd.concat(frames, ignore_index=True)
    stacked[CUTOFF] = stacked[CUTOFF].astype("datetime64[ns]")
    stacked[CUSTOMER_ID] = stacked[CUSTOMER_ID].astype(str)
    return stacked


def is_calibration_customer(
    customer_ids: pd.Series, fraction: float, seed: int
) -> np.ndarray:
    """Flag the customers held out for calibration.

    Each id is hashed with BLAKE2b as ``f"{seed}:{id}"``; the first 8 bytes, read as a
    fraction of 2**64, are compared with ``fraction``. The choice depends only on the id
    and the seed, so the same customers are held out at every cutoff and in any row order.

    Parameters
    ----------
    customer_ids : pandas.Series
        Customer ids (exact strings; other values are converted with ``str``).
    fraction : float
        Expected share of customers held out, in [0, 1].
    seed : int
        Seed of the job.

    Returns
    -------
    numpy.ndarray of bool
        True for held-out customers, aligned with ``customer_ids``.

    Examples
    --------
    >>> ids = pd.Series(["a", "b", "a"])
    >>> flags = is_calibration_customer(ids, 0.5, seed=1)
    >>> bool(flags[0] == flags[2])
    True
    """
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"split.calibration_fraction must be in [0, 1], got {fraction}")
    threshold = float(fraction) * 2.0**64
    ids = pd.Series(customer_ids)
    cache: dict[str, bool] = {}
    flags = np.empty(len(ids), dtype=bool)
    for i, value in enumerate(ids.to_numpy(dtype=object)):
        key = str(value)
        flag = cache.get(key)
        if flag is None:
            digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
            flag = int.from_bytes(digest, "big") < threshold
            cache[key] = flag
        flags[i] = flag
    return flags
