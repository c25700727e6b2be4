"""CatBoost regressor on the customer features (Tweedie loss by default)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from catboost import CatBoostRegressor, Pool

from clv_training.models.base import (
    catboost_importance,
    CLVModel,
    ModelFitError,
    check_xy,
    feature_matrix,
    finalize_prediction,
    select_features,
)

logger = logging.getLogger(__name__)

DEFAULT_LOSS = "Tweedie:variance_power=1.5"
#: Losses whose raw formula value is a log of the mean: predict with "Exponent".
_LOG_LINK_LOSSES = ("Tweedie", "Poisson", "LogLinQuantile")
#: Parameters set by this class; a params dict may not override them.
_FIXED = ("random_seed", "random_state", "allow_writing_files", "verbose", "silent")


def _loss_name(loss_function: str) -> str:
    return loss_function.split(":", 1)[0]


class CatBoostModel(CLVModel):
    """CatBoostRegressor on :func:`~clv_training.models.base.feature_matrix` of ``X``.

    The CatBoost object is built inside :meth:`fit`, so this wrapper holds only plain
    parameters until fitted (cloning or copying it never touches CatBoost; see
    catboost#3078).

    Parameters
    ----------
    horizon_days : int
        Prediction window in days.
    seed : int
        ``random_seed`` of CatBoost.
    params : dict, optional
        CatBoostRegressor parameters (``loss_function`` default
        ``Tweedie:variance_power=1.5``, ``iterations``, ``thread_count``,
        ``learning_rate``, ``depth``, ``l2_leaf_reg``, ``min_data_in_leaf``, ...).
        ``baseline_feature`` (not a CatBoost parameter) names a feature column holding a
        prior prediction of the horizon spend, e.g. ``btyd_clv``: with a log-link loss
        the trees then learn a multiplicative correction of that prior (boosting from a
        BG/NBD + Gamma-Gamma start), so they inherit its extrapolation to older
        customers than the training cutoffs had. ``correction_weight`` in [0, 1] shrinks
        that log-scale correction towards the prior (0: the prior itself, 1: the full
        correction); tuned on the validation window, it keeps a correction learned on
        young-customer cutoffs from overshooting on older customers.
    """

    name = "catboost"

    def __init__(self, horizon_days: int, seed: int = 0, params: dict[str, Any] | None = None):
        super().__init__(horizon_days, seed)
        self.params = dict(params or {})
        self.baseline_feature: str | None = self.params.pop("baseline_feature", None)
        self.baseline_fill_: float = 1.0
        self.correction_weight = float(self.params.pop("correction_weight", 1.0))
        if not 0.0 <= self.correction_weight <= 1.0:
            raise ValueError(
                f"catboost: correction_weight must be in [0, 1], got {self.correction_weight}"
            )
        if self.baseline_feature is None:
            # Without a prior there is nothing to shrink towards; the search space in
            # conf/ may still draw the weight, so it is ignored rather than refused.
            self.correction_weight = 1.0
        fixed = sorted(set(self.params) & set(_FIXED))
        if fixed:
            raise ValueError(f"catboost: parameters {fixed} are set by the model, not the config")
        self.params.setdefault("loss_function", DEFAULT_LOSS)
        if "min_data_in_leaf" in self.params:
            # CatBoost ignores min_data_in_leaf with its default symmetric trees; grow
            # depth-wise so that the tuned value has an effect.
            self.params.setdefault("grow_policy", "Depthwise")
        self.estimator_: CatBoostRegressor | None = None
        self.feature_names_: list[str] = []

    @property
    def eval_metric_name(self) -> str:
        """The eval-set metric name CatBoost reports (for CatBoostPruningCallback)."""
        return str(self.params.get("eval_metric", self.params["loss_function"]))

    @property
    def _prediction_type(self) -> str:
        loss = _loss_name(str(self.params["loss_function"]))
        return "Exponent" if loss in _LOG_LINK_LOSSES else "RawFormulaVal"

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        eval_set: tuple[pd.DataFrame, np.ndarray] | None = None,
        callbacks: Sequence[Any] | None = None,
    ) -> CatBoostModel:
        """Fit on ``X`` and horizon spend ``y``.

        Parameters
        ----------
        X, y
            Training rows and targets.
        eval_set : (X_val, y_val), optional
            Rows whose metric CatBoost reports each iteration (for pruning). The final
            model keeps all iterations (``use_best_model=False`` unless params say so), so
            the eval set does not pick the model it is scored on.
        callbacks : list, optional
            CatBoost callbacks, e.g. ``optuna_integration.CatBoostPruningCallback`` (call
            its ``check_pruned()`` after ``fit``).
        """
        y_arr = self._target(X, y)
        features = feature_matrix(X)
        if self.baseline_feature is not None:
            if self._prediction_type != "Exponent":
                raise ValueError("catboost: baseline_feature needs a log-link loss")
            if self.baseline_feature not in X.columns:
                raise ValueError(
                    f"catboost: baseline_feature {self.baseline_feature!r} is not a column; "
                    "for btyd_clv set features.btyd_features=true"
                )
            self.baseline_fill_ = float(max(np.mean(y_arr), 1e-3))
        train: Any = Pool(features, y_arr, baseline=self._baseline(X))
        fit_kwargs: dict[str, Any] = {}
        if eval_set is not None:
            X_val, y_val = eval_set
            y_val_arr = self._target(X_val, y_val)
            fit_kwargs["eval_set"] = Pool(
                select_features(X_val, list(features.columns), self.name),
                y_val_arr,
                baseline=self._baseline(X_val),
            )
            fit_kwargs["use_best_model"] = bool(self.params.get("use_best_model", False))
        if callbacks:
            fit_kwargs["callbacks"] = list(callbacks)
        params = {k: v for k, v in self.params.items() if k != "use_best_model"}
        self.estimator_ = CatBoostRegressor(
            **params, random_seed=self.seed, allow_writing_files=False, verbose=False
        )
        self.estimator_.fit(train, **fit_kwargs)
        self.feature_names_ = list(features.columns)
        logger.info(
            "catboost: fitted %d trees (%s) on %d rows x %d features",
            self.estimator_.tree_count_,
            self.params["loss_function"],
            len(features),
            len(self.feature_names_),
        )
        return self

    def _target(self, X: pd.DataFrame, y: np.ndarray) -> np.ndarray:
        y_arr = check_xy(X, y, self.name)
        if self._prediction_type == "Exponent":
            n_negative = int(np.sum(y_arr < 0))
            if n_negative:
                # Limitation: net refunds in the horizon are floored at 0 for log-link losses.
                logger.warning("catboost: %d negative targets set to 0", n_negative)
                y_arr = np.clip(y_arr, 0.0, None)
            if not np.any(y_arr > 0):
                raise ModelFitError(self.name, "log-link loss needs some positive targets; all 0")
        return y_arr

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Expected spend over the horizon (spend scale, not log), clipped at 0."""
        if self.estimator_ is None:
            raise RuntimeError("catboost: call fit before predict")
        features = select_features(X, self.feature_names_, self.name)
        if self.baseline_feature is not None:
            raw = self.estimator_.predict(features, prediction_type="RawFormulaVal")
            log_mean = self.correction_weight * raw + self._baseline(X)
            raw = np.exp(np.clip(log_mean, -50.0, 50.0))
        else:
            raw = self.estimator_.predict(features, prediction_type=self._prediction_type)
        return finalize_prediction(raw, len(X), self.name)

    def _baseline(self, X: pd.DataFrame) -> np.ndarray | None:
        """Log of the prior prediction (missing priors take the training mean)."""
        if self.baseline_feature is None:
            return None
        prior = pd.to_numeric(X[self.baseline_feature], errors="coerce").to_numpy(float)
        prior = np.where(np.isfinite(prior), prior, self.baseline_fill_)
        return np.log(np.clip(prior, 1e-3, None))

    def feature_importance(self) -> pd.Series | None:
        """CatBoost's PredictionValuesChange importance per feature, descending."""
        return catboost_importance(self.estimator_, self.feature_names_)

    def fit_diagnostics(self) -> dict[str, float]:
        """Number of trees and, with an eval set, the last eval metric value."""
        if self.estimator_ is None:
            return {}
        out = {"tree_count": float(self.estimator_.tree_count_)}
        scores = self.estimator_.get_evals_result().get("validation", {})
        if self.eval_metric_name in scores and len(scores[self.eval_metric_name]):
            out["eval_metric"] = float(scores[self.eval_metric_name][-1])
        return out
