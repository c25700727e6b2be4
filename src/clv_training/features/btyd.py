"""BG/NBD + Gamma-Gamma outputs as features for the ML families (``features.btyd_features``).

At each training cutoff a BG/NBD + Gamma-Gamma model is fitted on the customers' history
up to that cutoff (no label is used), and its expected purchases, P(alive) and expected
spend become three more columns. The model fitted at the observation end is kept in the
registered pipeline, so serving adds the same columns without refitting.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from clv_training.models.base import ModelFitError
from clv_training.models.btyd import BTYDModel

log = logging.getLogger(__name__)

COLUMNS = ("btyd_expected_purchases", "btyd_p_alive", "btyd_clv")


def btyd_columns(model: BTYDModel | None, features: pd.DataFrame) -> pd.DataFrame:
    """The three BTYD columns for ``features`` (NaN when no model could be fitted)."""
    if model is None:
        return pd.DataFrame(np.nan, index=features.index, columns=list(COLUMNS))
    X = features.reset_index(drop=True)
    return pd.DataFrame(
        {
            COLUMNS[0]: model.expected_purchases(X),
            COLUMNS[1]: model.p_alive(X),
            COLUMNS[2]: model.predict(X),
        },
        index=features.index,
    )


class BTYDFeatures:
    """The ``extra`` hook of :func:`~clv_training.features.build.build_features`.

    Calling it fits a model at the given cutoff and returns its columns; the fitted models
    are kept by cutoff in :attr:`models`.
    """

    def __init__(self, horizon_days: int, seed: int = 0, max_fit_customers: int | None = None):
        self.horizon_days = int(horizon_days)
        self.seed = int(seed)
        self.max_fit_customers = max_fit_customers
        self.models: dict[pd.Timestamp, BTYDModel | None] = {}

    def fit_at(self, features: pd.DataFrame, cutoff: pd.Timestamp) -> BTYDModel | None:
        X = features.reset_index().assign(cutoff=pd.Timestamp(cutoff))
        model = BTYDModel(self.horizon_days, self.seed, self.max_fit_customers)
        try:
            model.fit(X)
        except ModelFitError as error:
            # Limitation: an early cutoff with too few repeat buyers gets NaN BTYD columns
            # (the tree models take NaN as missing) instead of stopping the job.
            log.warning("BTYD features at %s left empty: %s", cutoff.date(), error.diagnostic)
            model = None
        self.models[pd.Timestamp(cutoff)] = model
        return model

    def __call__(self, features: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
        return btyd_columns(self.fit_at(features, cutoff), features)
