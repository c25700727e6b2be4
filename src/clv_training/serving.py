"""The MLflow pyfunc around :class:`~clv_training.pipeline.CLVPipeline`.

The class lives in the installed package (a class defined in a script cannot be loaded
by ``mlflow models serve``). Input: raw transactions with ``customer_id`` (string),
``timestamp`` (datetime) and ``amount`` (double); params ``as_of`` (YYYY-MM-DD, default
the latest day in the input) and ``allow_returns`` (accept negative amounts as returns).
Output: one row per customer with :data:`~clv_training.pipeline.OUTPUT_COLUMNS`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from clv_training.data import AMOUNT, CUSTOMER_ID, TIMESTAMP
from clv_training.data.contract import DataContractError, Problem
from clv_training.pipeline import CLVPipeline

log = logging.getLogger(__name__)

DEFAULT_PARAMS: dict[str, Any] = {"as_of": "", "allow_returns": False}
_MAX_ROWS_SHOWN = 5


class CLVPyfuncModel(mlflow.pyfunc.PythonModel):
    """Scores raw transactions with the bundled :class:`CLVPipeline`."""

    def __init__(self, pipeline: CLVPipeline):
        self.pipeline = pipeline

    def predict(self, context, model_input, params=None):  # noqa: D401 (MLflow's signature)
        """Score the customers in ``model_input``; bad input raises a 400-class error."""
        params = {**DEFAULT_PARAMS, **(params or {})}
        try:
            frame = _as_frame(model_input)
            if not _truthy(params.get("allow_returns")):
                reject_negative_amounts(frame)
            as_of = params.get("as_of") or None
            return self.pipeline.predict_transactions(frame, as_of=as_of)
        except DataContractError as error:
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from error


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes"}
    return bool(value)


def _as_frame(model_input: Any) -> pd.DataFrame:
    if isinstance(model_input, pd.DataFrame):
        frame = model_input
    else:
        try:
            frame = pd.DataFrame(model_input)
        except (TypeError, ValueError) as error:
            raise _request_error(
                None, f"input is not a table of transactions: {error}",
                "send a table with columns customer_id, timestamp, amount",
            ) from error
    if frame.empty:
        raise _request_error(
            None, "input has no rows",
            "send transactions with columns customer_id, timestamp, amount",
        )
    return frame


def reject_negative_amounts(frame: pd.DataFrame) -> None:
    """Refuse negative amounts unless the caller allows returns (``allow_returns``)."""
    if AMOUNT not in frame.columns:
        return  # the contract reports the missing column
    amounts = pd.to_numeric(frame[AMOUNT], errors="coerce")
    bad = frame[amounts < 0]
    if bad.empty:
        return
    shown = ", ".join(
        f"row {i} (customer_id={row.get(CUSTOMER_ID)!s}, amount={row[AMOUNT]})"
        for i, row in bad.head(_MAX_ROWS_SHOWN).iterrows()
    )
    raise _request_error(
        AMOUNT,
        f"column 'amount': {len(bad)} negative value(s), e.g. {shown}",
        "send purchases only, or pass params {\"allow_returns\": true} to net returns into "
        "their day",
    )


def _request_error(column: str | None, what: str, fix: str) -> DataContractError:
    """A one-problem contract error (its message needs Problem objects, not a string)."""
    return DataContractError([Problem(column, what, fix)])


def input_example(transactions: pd.DataFrame, n_customers: int = 5) -> pd.DataFrame:
    """A few customers' raw rows, typed as the server expects them.

    Customers with a return (negative row) are skipped when others exist, so the saved
    example scores with the default params (``allow_returns`` false) as sent.
    """
    returns = transactions.loc[transactions[AMOUNT] < 0, CUSTOMER_ID].unique()
    candidates = transactions.loc[~transactions[CUSTOMER_ID].isin(returns), CUSTOMER_ID]
    if candidates.empty:
        candidates = transactions[CUSTOMER_ID]
    ids = sorted(candidates.unique())[:n_customers]
    rows = transactions[transactions[CUSTOMER_ID].isin(ids)]
    return pd.DataFrame(
        {
            CUSTOMER_ID: rows[CUSTOMER_ID].astype(str).to_numpy(dtype=object),
            TIMESTAMP: pd.to_datetime(rows[TIMESTAMP]).to_numpy(),
            AMOUNT: rows[AMOUNT].astype("float64").to_numpy(),
        }
    ).reset_index(drop=True)


def log_pipeline(
    pipeline: CLVPipeline,
    example: pd.DataFrame,
    *,
    name: str = "model",
    pip_requirements: list[str] | None = None,
) -> Any:
    """Log the pipeline as a pyfunc with signature, input example and its own code.

    Returns MLflow's ``ModelInfo``. The package source goes along as ``code_paths`` so the
    model loads with the code it was trained with.
    """
    output = CLVPyfuncModel(pipeline).predict(None, example, params={"allow_returns": True})
    signature = infer_signature(example, output, params=DEFAULT_PARAMS)
    package_dir = Path(__file__).resolve().parent
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=CLVPyfuncModel(pipeline),
        signature=signature,
        input_example=example,
        code_paths=[str(package_dir)],
        pip_requirements=pip_requirements,
    )


def load_and_check(model_uri: str, example: pd.DataFrame) -> pd.DataFrame:
    """Load a logged model back and score the example: a model that cannot load or
    predict is never registered."""
    loaded = mlflow.pyfunc.load_model(model_uri)
    out = loaded.predict(example, params={"allow_returns": True})
    if not isinstance(out, pd.DataFrame) or out.empty:
        raise RuntimeError(f"{model_uri} loaded but returned no predictions")
    if not np.isfinite(out.loc[out["status"] == "scored", "clv"].to_numpy(float)).all():
        raise RuntimeError(f"{model_uri} returned non-finite CLV on its input example")
    return out
