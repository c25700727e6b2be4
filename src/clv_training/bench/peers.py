"""The peer implementations the benchmark measures ours against.

- :class:`LifetimesBTYD`: BG/NBD (``lifetimes.BetaGeoFitter``) x Gamma-Gamma
  (``lifetimes.GammaGammaFitter``) on our features at a cutoff, time in weeks.
- :func:`lifetimes_rfm` and :func:`pymc_marketing_rfm`: the two libraries' RFM summaries
  of a transaction log, to time against :func:`clv_training.features.build.build_features`.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

DAYS_PER_WEEK = 7.0
#: Penalizers tried in turn when lifetimes' BG/NBD does not converge (0 = maximum likelihood).
PENALIZERS = (0.0, 0.001, 0.01, 0.1)


class LifetimesBTYD:
    """BG/NBD + Gamma-Gamma as fitted by lifetimes, on the features of one cutoff.

    Parameters
    ----------
    horizon_days : int
        Prediction window in days.

    Attributes
    ----------
    bgnbd_params_, gamma_gamma_params_ : dict
        The fitted parameters (BG/NBD in weeks).
    penalizer_ : float
        The BG/NBD penalizer that converged (0 when plain maximum likelihood did).
    """

    name = "lifetimes"

    def __init__(self, horizon_days: int) -> None:
        self.horizon_days = int(horizon_days)
        self.bgnbd_params_: dict[str, float] = {}
        self.gamma_gamma_params_: dict[str, float] = {}
        self.penalizer_ = 0.0
        self._bg = None
        self._gg = None

    @staticmethod
    def _rft(X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            X["frequency"].to_numpy(float),
            X["recency"].to_numpy(float) / DAYS_PER_WEEK,
            X["T"].to_numpy(float) / DAYS_PER_WEEK,
        )

    def fit(self, X: pd.DataFrame) -> LifetimesBTYD:
        """Fit on one row per customer (``frequency``, ``recency``, ``T`` in days, and
        ``monetary_value``); Gamma-Gamma on repeat buyers with positive repeat spend."""
        from lifetimes import BetaGeoFitter, GammaGammaFitter

        x, t_x, age = self._rft(X)
        last_error: Exception | None = None
        for penalizer in PENALIZERS:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    bg = BetaGeoFitter(penalizer_coef=penalizer).fit(x, t_x, age)
                self._bg, self.penalizer_ = bg, penalizer
                break
            except Exception as error:  # noqa: BLE001 - lifetimes raises ConvergenceError
                last_error = error
                logger.warning("lifetimes BG/NBD penalizer %s failed: %s", penalizer, error)
        if self._bg is None:
            raise RuntimeError(f"lifetimes BG/NBD did not converge: {last_error}")
        self.bgnbd_params_ = {k: float(v) for k, v in self._bg.params_.items()}

        repeat = (x > 0) & (X["monetary_value"].to_numpy(float) > 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._gg = GammaGammaFitter(penalizer_coef=0.0).fit(
                x[repeat], X["monetary_value"].to_numpy(float)[repeat]
            )
        self.gamma_gamma_params_ = {k: float(v) for k, v in self._gg.params_.items()}
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Expected spend over ``horizon_days``: E[purchases] x E[spend per occasion]."""
        x, t_x, age = self._rft(X)
        purchases = self._bg.conditional_expected_number_of_purchases_up_to_time(
            self.horizon_days / DAYS_PER_WEEK, x, t_x, age
        )
        gg = self.gamma_gamma_params_
        # lifetimes' own conditional_expected_average_profit in closed form, with the
        # customer's mean clipped at 0 as ours is (net refunds mean no spend).
        m = np.clip(X["monetary_value"].to_numpy(float), 0.0, None)
        spend = gg["p"] * (gg["v"] + x * m) / (gg["p"] * x + gg["q"] - 1.0)
        out = np.asarray(purchases, dtype=float) * spend
        return np.clip(np.nan_to_num(out, nan=0.0, posinf=0.0), 0.0, None)


def lifetimes_rfm(transactions: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """lifetimes' ``summary_data_from_transaction_data`` (days, with monetary value)."""
    from lifetimes.utils import summary_data_from_transaction_data

    return summary_data_from_transaction_data(
        transactions, "customer_id", "timestamp", monetary_value_col="amount",
        observation_period_end=cutoff, freq="D",
    )


def pymc_marketing_rfm(transactions: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """PyMC-Marketing's ``clv.utils.rfm_summary`` (days, with monetary value)."""
    from pymc_marketing.clv.utils import rfm_summary

    return rfm_summary(
        transactions, "customer_id", "timestamp", monetary_value_col="amount",
        observation_period_end=cutoff, time_unit="D",
    )
