"""Batch scoring behind ``make predict``: a CSV or Parquet log in, one row per customer out.

The file goes through the same column mapping as training (``data.*``) and the same
pyfunc as the server, so batch and served predictions agree. Output is written to a
temporary file and renamed, so bad input never leaves a partial output file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import hydra
import mlflow
import pandas as pd
from omegaconf import DictConfig

from clv_training import tracking
from clv_training.config import DataConfig, to_dataclass
from clv_training.data import AMOUNT, CUSTOMER_ID, TIMESTAMP
from clv_training.data.contract import validate_transactions_frame
from clv_training.data.load import read_raw
from clv_training.jobs.train import CONF_DIR

log = logging.getLogger(__name__)


def score_file(cfg: DictConfig) -> pd.DataFrame:
    """Read, score and write; returns the predictions."""
    root = Path(cfg.paths.root)
    data_cfg = to_dataclass(DataConfig, cfg.data)
    raw = read_raw(data_cfg, root=root)
    # A CSV arrives as text: parse it with the configured date format and column names
    # (one error listing every problem), so the model's typed signature accepts it.
    typed = validate_transactions_frame(
        raw, timezone=data_cfg.timezone, date_format=data_cfg.date_format,
        columns=data_cfg.columns,
    )
    has_id = typed[CUSTOMER_ID].notna()
    if not has_id.all():
        # Limitation: rows without a customer id cannot be scored; they are counted in
        # the log, not written anywhere (training saves them as data/set_aside.csv).
        log.warning("%d rows have no customer id and are not scored", int((~has_id).sum()))
    frame = typed.loc[has_id, [CUSTOMER_ID, TIMESTAMP, AMOUNT]].reset_index(drop=True)
    tracking.setup_mlflow(cfg.mlflow.tracking_uri, cfg.mlflow.artifact_root, cfg.mlflow.experiment)
    model = mlflow.pyfunc.load_model(cfg.model_uri)
    params = {"as_of": str(cfg.as_of or ""), "allow_returns": bool(cfg.allow_returns)}
    predictions = model.predict(frame, params=params)

    output = Path(cfg.output)
    if not output.is_absolute():
        output = root / output
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(handle)
    try:
        if output.suffix.lower() in {".parquet", ".pq"}:
            predictions.to_parquet(tmp, index=False)
        else:
            predictions.to_csv(tmp, index=False)
        # mkstemp makes the file 0600; give it the mode a plain write would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    scored = int((predictions["status"] == "scored").sum())
    log.info(
        "scored %d customers (%d without an occasion) from %d rows of %s with %s -> %s",
        scored, len(predictions) - scored, len(raw), data_cfg.path, cfg.model_uri, output,
    )
    return predictions


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    score_file(cfg)


if __name__ == "__main__":
    main()
