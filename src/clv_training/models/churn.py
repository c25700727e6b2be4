"""P(no purchase in the horizon): a CatBoost classifier, calibrated on held-out customers."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from catboost import CatBoostClassifier
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from clv_training.models.base import catboost_importance, feature_matrix, select_features

logger = logging.getLogger(__name__)

CALIBRATION_METHODS = ("isotonic", "sigmoid", "none")
_EPS = 1e-6
_FIXED = ("random_seed", "random_state", "allow_writing_files", "verbose", "silent")


def churn_label(target_occasions: np.ndarray | pd.Series) -> np.ndarray:
    """Churn = no purchase occasion in the horizon (``target_occasions == 0``)."""
    return (np.asarray(target_occasions, dtype="float64") == 0).astype("int64")


def _logit(prob: np.ndarray) -> np.ndarray:
    clipped = np.clip(prob, _EPS, 1.0 - _EPS)
    return np.log(clipped / (1.0 - clipped))


class ChurnModel:
    """Probability that a customer makes no purchase in the next horizon.

    Parameters
    ----------
    params : dict, optional
        CatBoostClassifier parameters (``iterations``, ``depth``, ``learning_rate``, ...).
    seed : int
        ``random_seed`` of CatBoost.
    thread_count : int
        CatBoost threads.

    Notes
    -----
    :meth:`calibrate` maps the classifier's raw probability through an isotonic
    regression or a logistic (Platt) fit on its logit, learnt on customers the classifier
    did not train on.
    """

    def __init__(
        self, params: dict[str, Any] | None = None, seed: int = 0, thread_count: int = 2
    ) -> None:
        self.params = dict(params or {})
        fixed = sorted(set(self.params) & set(_FIXED))
        if fixed:
            raise ValueError(f"churn: parameters {fixed} are set by the model, not the config")
        self.params.setdefault("thread_count", thread_count)
        self.seed = int(seed)
        self.estimator_: CatBoostClassifier | None = None
        self.constant_: float | None = None
        self.feature_names_: list[str] = []
        self.calibration_method = "none"
        self.calibrator_: IsotonicRegression | LogisticRegression | None = None

    def fit(self, X: pd.DataFrame, churned: np.ndarray) -> ChurnModel:
        """Fit the classifier on ``feature_matrix(X)`` and 0/1 labels ``churned``."""
        labels = self._labels(X, churned)
        features = feature_matrix(X)
        self.feature_names_ = list(features.columns)
        self.calibration_method, self.calibrator_ = "none", None
        if len(np.unique(labels)) < 2:
            # Limitation: with one class only there is nothing to learn; predict its rate.
            self.constant_ = float(labels.mean()) if len(labels) else 0.5
            self.estimator_ = None
            logger.warning("churn: every training label is %s; predicting it", self.constant_)
            return self
        self.constant_ = None
        self.estimator_ = CatBoostClassifier(
            **self.params, random_seed=self.seed, allow_writing_files=False, verbose=False
        )
        self.estimator_.fit(features, labels)
        logger.info(
            "churn: fitted on %d rows, churn rate %.3f", len(labels), float(labels.mean())
        )
        return self

    @staticmethod
    def _labels(X: pd.DataFrame, churned: np.ndarray) -> np.ndarray:
        labels = np.asarray(churned).reshape(-1)
        if len(labels) != len(X):
            raise ValueError(f"churn: X has {len(X)} rows but labels have {len(labels)}")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("churn: labels must be 0/1 (or booleans)")
        return labels.astype("int64")

    def raw_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Uncalibrated P(churn) from the classifier."""
        if self.constant_ is not None:
            return np.full(len(X), self.constant_, dtype="float64")
        if self.estimator_ is None:
            raise RuntimeError("churn: call fit before predicting")
        features = select_features(X, self.feature_names_, "churn")
        return self.estimator_.predict_proba(features)[:, 1].astype("float64")

    def calibrate(
        self, X_cal: pd.DataFrame, churned_cal: np.ndarray, method: str = "isotonic"
    ) -> ChurnModel:
        """Learn a map from raw to calibrated probability on held-out customers.

        Parameters
        ----------
        X_cal : pandas.DataFrame
            Customers the classifier did not train on.
        churned_cal : numpy.ndarray
            Their 0/1 churn labels.
        method : {"isotonic", "sigmoid", "none"}
            Isotonic regression, logistic regression on the logit of the raw probability,
            or no calibration.
        """
        if method not in CALIBRATION_METHODS:
            raise ValueError(f"churn: calibration must be one of {CALIBRATION_METHODS}")
        labels = self._labels(X_cal, churned_cal)
        self.calibration_method, self.calibrator_ = "none", None
        if method == "none":
            return self
        if len(np.unique(labels)) < 2:
            # Limitation: a one-class calibration set cannot calibrate; raw scores are kept.
            logger.warning(
                "churn: calibration set of %d customers has one class; not calibrating",
                len(labels),
            )
            return self
        raw = self.raw_proba(X_cal)
        if method == "isotonic":
            calibrator: IsotonicRegression | LogisticRegression = IsotonicRegression(
                y_min=0.0, y_max=1.0, out_of_bounds="clip"
            )
            calibrator.fit(raw, labels)
        else:
            calibrator = LogisticRegression(C=1e6)
            calibrator.fit(_logit(raw).reshape(-1, 1), labels)
        self.calibration_method, self.calibrator_ = method, calibrator
        logger.info("churn: %s calibration on %d held-out customers", method, len(labels))
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated P(no purchase in the horizon), shape ``(len(X),)``, in [0, 1]."""
        raw = self.raw_proba(X)
        if self.calibrator_ is None:
            out = raw
        elif isinstance(self.calibrator_, IsotonicRegression):
            out = self.calibrator_.predict(raw)
        else:
            out = self.calibrator_.predict_proba(_logit(raw).reshape(-1, 1))[:, 1]
        return np.clip(np.asarray(out, dtype="float64"), 0.0, 1.0)

    def feature_importance(self) -> pd.Series | None:
        """CatBoost importance per feature, descending (None for a constant model)."""
        return catboost_importance(self.estimator_, self.feature_names_)
