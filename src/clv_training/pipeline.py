"""The fitted CLV bundle: raw transactions in, one scored row per customer out.

:class:`CLVPipeline` is what gets registered. Training, batch scoring and the HTTP server
all call :meth:`CLVPipeline.predict_transactions`, which runs the same contract and the
same feature code as training, so nothing differs between training and serving.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from clv_training.config import DataConfig, FeaturesConfig, SegmentsConfig
from clv_training.data import AMOUNT, CUSTOMER_ID, SOURCE_ROW, TIMESTAMP
from clv_training.data.contract import (
    DataContractError,
    Problem,
    prepare_transactions,
    validate_transactions_frame,
)
from clv_training.features.btyd import btyd_columns
from clv_training.features.build import build_features
from clv_training.features.engine import DuckDBEngine
from clv_training.intervals import ConformalIntervals
from clv_training.models.base import CLVModel
from clv_training.models.churn import ChurnModel
from clv_training.segments import SegmentRule, trend_labels

log = logging.getLogger(__name__)

# One DuckDB engine per serving thread and feature settings: opening a connection costs
# more than scoring a small request. Each request's rows are dropped after use.
_ENGINES = threading.local()


def _serving_engine(cfg: FeaturesConfig) -> DuckDBEngine:
    engines = getattr(_ENGINES, "by_config", None)
    if engines is None:
        engines = _ENGINES.by_config = {}
    key = (cfg.duckdb_memory_limit, cfg.duckdb_temp_directory)
    if key not in engines:
        engines[key] = DuckDBEngine(cfg)
    return engines[key]

OUTPUT_COLUMNS = [
    "customer_id",
    "clv",
    "clv_lower_80",
    "clv_upper_80",
    "clv_lower_90",
    "clv_upper_90",
    "churn_probability",
    "trend",
    "segment",
    "at_risk",
    "status",
    "as_of",
    "horizon_days",
    "model_version",
]


@dataclass
class CLVPipeline:
    """Everything needed to score customers from their raw transactions.

    Attributes
    ----------
    family : str
        The model family that won (``catboost``, ``sklearn``, ``btyd``, ``formula``).
    model : CLVModel
        Expected spend over ``horizon_days`` from the features at a cutoff.
    intervals : ConformalIntervals
        Conformal bounds calibrated on held-out customers.
    churn : ChurnModel
        Calibrated probability of no purchase in the horizon.
    segments : SegmentRule
        Value-tier thresholds learned on the training window.
    """

    family: str
    model: CLVModel
    intervals: ConformalIntervals
    churn: ChurnModel
    segments: SegmentRule
    horizon_days: int
    features_cfg: dict[str, Any]
    segments_cfg: dict[str, Any]
    data_policy: dict[str, Any]
    model_version: str = "unregistered"
    metadata: dict[str, Any] = field(default_factory=dict)
    # BG/NBD + Gamma-Gamma fitted at the observation end, when features.btyd_features.
    btyd_features: Any = None

    def features_config(self) -> FeaturesConfig:
        """The training feature settings, run on embedded DuckDB whatever trained them.

        A model trained with ``engine=spark`` serves without Spark: both engines run the
        same expressions (``features/expr.py``) and give the same features.
        """
        return FeaturesConfig(**{**self.features_cfg, "engine": "duckdb"})

    def score_features(self, features: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
        """Score customers from features already built at ``cutoff`` (index customer_id)."""
        if self.features_cfg.get("btyd_features"):
            features = features.join(btyd_columns(self.btyd_features, features))
        X = features.reset_index()
        X["cutoff"] = pd.Timestamp(cutoff)
        clv = np.asarray(self.model.predict(X), dtype=float)
        bounds = self.intervals.to_frame(clv)
        churn = np.asarray(self.churn.predict_proba(X), dtype=float)
        seg_cfg = SegmentsConfig(**self.segments_cfg)
        trend = trend_labels(
            features["spend_trend"].to_numpy(),
            features["T"].to_numpy(),
            self.features_cfg["trend_window_days"],
            seg_cfg.growing_above,
            seg_cfg.declining_below,
        )
        tiers = self.segments.assign(clv, churn)
        out = pd.DataFrame(
            {
                "customer_id": features.index.astype(str),
                "clv": clv,
            }
        )
        for column in bounds.columns:
            out[column] = bounds[column].to_numpy()
        out["churn_probability"] = churn
        out["trend"] = np.asarray(trend, dtype=object)
        out["segment"] = tiers["segment"].to_numpy()
        out["at_risk"] = tiers["at_risk"].to_numpy().astype(bool)
        out["status"] = "scored"
        return out

    def predict_transactions(
        self, transactions: pd.DataFrame, as_of: str | pd.Timestamp | None = None
    ) -> pd.DataFrame:
        """Validate raw transactions, build features at ``as_of`` and score every customer.

        Parameters
        ----------
        transactions : DataFrame
            ``customer_id`` (str), ``timestamp`` (datetime or ISO string), ``amount``.
        as_of : date-like, optional
            The day to predict from; default the latest transaction day in the input. Rows
            after it are set aside.

        Returns
        -------
        DataFrame
            One row per input customer with :data:`OUTPUT_COLUMNS`. Customers without a
            purchase occasion by ``as_of`` (for example only refunds, or only rows after
            it) get ``status`` naming why and no prediction.
        """
        frame = validate_transactions_frame(
            transactions, timezone=self.data_policy.get("timezone", "UTC")
        )
        if SOURCE_ROW not in frame.columns:
            frame = frame.assign(**{SOURCE_ROW: np.arange(len(frame), dtype="int64")})
        policy = DataConfig(
            name="serving",
            timezone=self.data_policy.get("timezone", "UTC"),
            duplicates=self.data_policy.get("duplicates", "keep"),
            occasion_policy=self.data_policy.get("occasion_policy", "positive_net"),
        )
        prepared = prepare_transactions(
            frame[[CUSTOMER_ID, TIMESTAMP, AMOUNT, SOURCE_ROW]],
            policy,
            observation_end=as_of,
            min_customers=0,
        )
        cutoff = prepared.observation_end
        cfg = self.features_config()
        features = build_features(
            prepared.transactions, cutoff, cfg, engine=_serving_engine(cfg)
        )
        if features.empty:
            scored = pd.DataFrame(columns=OUTPUT_COLUMNS)
        else:
            scored = self.score_features(features, cutoff)

        # Customers with no usable occasion still get a row that says why.
        seen = set(scored["customer_id"])
        missing = (
            prepared.set_aside[~prepared.set_aside[CUSTOMER_ID].astype(str).isin(seen)]
            .dropna(subset=[CUSTOMER_ID])
            .groupby(CUSTOMER_ID, sort=True)["reason"]
            .agg(lambda reasons: ",".join(sorted(set(reasons))))
        )
        if len(missing):
            unscored = pd.DataFrame(
                {"customer_id": missing.index.astype(str), "status": "no_occasion:" + missing}
            )
            scored = pd.concat([scored, unscored], ignore_index=True)
        if scored.empty:
            raise DataContractError([Problem(
                CUSTOMER_ID, f"none of the {len(frame)} rows has a customer id",
                "send a non-empty customer_id on every row",
            )])
        scored["as_of"] = cutoff.strftime("%Y-%m-%d")
        scored["horizon_days"] = int(self.horizon_days)
        scored["model_version"] = self.model_version
        log.info(
            "scored %d customers from %d rows as of %s (%d rows set aside, %d customers "
            "without an occasion)",
            int((scored["status"] == "scored").sum()),
            len(frame),
            scored["as_of"].iloc[0] if len(scored) else cutoff,
            len(prepared.set_aside),
            len(missing),
        )
        return scored.reindex(columns=OUTPUT_COLUMNS).reset_index(drop=True)

    def with_version(self, version: str) -> CLVPipeline:
        return dataclasses.replace(self, model_version=version)
