"""Structured configs: the typed schema behind every YAML file in ``conf/``.

Hydra composes ``conf/train.yaml`` on top of :class:`TrainConfig`, so a misspelt key or a
value of the wrong type in an override fails at once instead of being ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ColumnsConfig:
    """Names of the source columns that map onto the canonical transaction columns."""

    customer_id: str = "customer_id"
    timestamp: str = "timestamp"
    amount: str = "amount"
    # Optional boolean column flagging cancelled invoices; flagged rows are set aside.
    cancelled: str | None = None


@dataclass
class DataConfig:
    """Where the transaction log comes from and how raw rows become purchase occasions."""

    name: str = MISSING
    # ``lifetimes``: a file shipped in the lifetimes wheel's datasets folder (``file``).
    # ``file``: a CSV, Parquet or whitespace-delimited file at ``path``.
    source: str = "file"
    path: str | None = None
    file: str | None = None
    # csv | parquet | whitespace; null picks by file extension.
    format: str | None = None
    # Column names for files without a header line (null: the file has a header).
    names: list[str] | None = None
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    # strptime format of the timestamp column; null lets pandas infer ISO-8601.
    date_format: str | None = None
    # Time zone that naive timestamps are in; aware timestamps are converted to it
    # before the calendar day of a transaction is taken.
    timezone: str = "UTC"
    # Last day observed (YYYY-MM-DD); null means the last transaction date.
    observation_end: str | None = None
    # What to do with exact duplicate rows (same customer, timestamp and amount):
    # keep (count them, keep them) or drop (set them aside as ``exact_duplicate``).
    duplicates: str = "keep"
    # positive_net: a purchase occasion is a customer-day whose net amount is > 0; rows of
    # days with net <= 0 are set aside. any: every customer-day is an occasion.
    occasion_policy: str = "positive_net"
    # Optional row limit for smoke runs (first N customers by id, all of their rows).
    max_customers: int | None = None


@dataclass
class FeaturesConfig:
    """Customer features computed at a cutoff (see :mod:`clv_training.features`)."""

    # Trailing windows (days) for spend and occasion counts.
    windows: list[int] = field(default_factory=lambda: [30, 90, 180])
    # Window (days) that the spend trend compares with the customer's earlier rate.
    trend_window_days: int = 90
    # Add BG/NBD expected purchases and P(alive) as features for the ML models.
    btyd_features: bool = True
    # duckdb memory limit and spill folder for large logs.
    duckdb_memory_limit: str = "4GB"
    duckdb_temp_directory: str | None = None
    # Where the feature expressions run: duckdb (embedded) | spark (conf/engine/spark.yaml).
    engine: str = "duckdb"
    # Spark only: the master (local[2], or a cluster URL) and extra spark.* settings.
    spark_master: str = "local[2]"
    spark_conf: dict[str, str] = field(default_factory=dict)


@dataclass
class SplitConfig:
    """Time cutoffs: test, validation and the earlier training cutoffs."""

    # Distance between consecutive cutoffs; null means horizon_days.
    step_days: int | None = None
    # Training cutoffs stacked below the validation cutoff (the earliest that fit).
    max_train_cutoffs: int = 3
    # A cutoff needs this many days of history since the first transaction.
    min_history_days: int = 60
    # Share of customers held out of the training windows to calibrate intervals,
    # churn probabilities and segment thresholds.
    calibration_fraction: float = 0.25


@dataclass
class ModelConfig:
    """One model family: its fixed parameters and its Optuna search space."""

    name: str = MISSING
    enabled: bool = True
    # Fixed constructor parameters.
    params: dict[str, Any] = field(default_factory=dict)
    # Search space: {param: {type: int|float|categorical, low, high, log, choices}}.
    search: dict[str, Any] = field(default_factory=dict)
    # Example rows (a seeded sample) that each fit of this family uses; null: all.
    max_train_rows: int | None = None


@dataclass
class ModelsConfig:
    formula: ModelConfig = field(default_factory=lambda: ModelConfig(name="formula"))
    btyd: ModelConfig = field(default_factory=lambda: ModelConfig(name="btyd"))
    sklearn: ModelConfig = field(default_factory=lambda: ModelConfig(name="sklearn"))
    catboost: ModelConfig = field(default_factory=lambda: ModelConfig(name="catboost"))


@dataclass
class TuningConfig:
    """Optuna: trials per family, sampler seed, storage and pruning."""

    n_trials: int = 10
    # Journal file under mlruns/optuna (safe with several workers), or a database URL.
    storage: str | None = None
    # Study name prefix; the family, data digest and seed are appended.
    study_prefix: str = "clv"
    pruning: bool = True
    timeout_seconds: int | None = None
    show_progress_bar: bool = True
    # Example rows (a seeded sample) that each Optuna trial fits on; null: all. The
    # chosen params are then refitted under the family's own max_train_rows.
    max_train_rows: int | None = 200_000
    # After its own trials, the train job waits up to this long for trials that other
    # workers (make tune-worker) are still running before it chooses the best; 0: no wait.
    wait_for_workers_seconds: int = 300
    # PostgreSQL storage only: seconds between a running trial's heartbeats, and without
    # one before the trial is failed (its worker died) and queued again.
    heartbeat_seconds: int = 60
    grace_seconds: int = 120
    # Times one failed-by-heartbeat trial is queued again; null: without limit.
    max_retry: int | None = 3
    # Families a tune worker runs trials for; null: every enabled family with a search.
    families: list[str] | None = None


@dataclass
class IntervalsConfig:
    levels: list[float] = field(default_factory=lambda: [0.8, 0.9])
    # Mondrian conformal: residual quantiles per bin of predicted value.
    n_bins: int = 10


@dataclass
class ChurnConfig:
    params: dict[str, Any] = field(
        default_factory=lambda: {"iterations": 300, "depth": 6, "learning_rate": 0.08}
    )
    # isotonic | sigmoid | none: calibration on the held-out customers.
    calibration: str = "isotonic"
    # Example rows (a seeded sample) that the classifier trains on; null: all.
    max_train_rows: int | None = 500_000


@dataclass
class SegmentsConfig:
    # Upper quantiles of predicted CLV on the training window: high >= q_high, ...
    high_quantile: float = 0.8
    medium_quantile: float = 0.5
    at_risk_churn_probability: float = 0.5
    # Trend: spend_trend in [-1, 1] against these thresholds.
    growing_above: float = 0.2
    declining_below: float = -0.2


@dataclass
class SelectionConfig:
    """How the best family is chosen (validation) and promoted (test)."""

    metric: str = "rmse"
    greater_is_better: bool = False


@dataclass
class PromotionConfig:
    # Promote only when |test_coverage_90 - 0.9| <= coverage_tolerance.
    coverage_tolerance: float = 0.05
    # Compare with the champion only on the same test window; otherwise promote.
    promote_on_window_change: bool = True


@dataclass
class MlflowConfig:
    tracking_uri: str = MISSING
    artifact_root: str = MISSING
    experiment: str = "clv"
    model_name: str = "clv"


@dataclass
class PathsConfig:
    root: str = MISSING
    mlruns: str = MISSING
    output_dir: str = MISSING


@dataclass
class TrainConfig:
    """The whole training job (``conf/train.yaml``)."""

    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    intervals: IntervalsConfig = field(default_factory=IntervalsConfig)
    churn: ChurnConfig = field(default_factory=ChurnConfig)
    segments: SegmentsConfig = field(default_factory=SegmentsConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    horizon_days: int = 91
    seed: int = 42
    # Stop the job at the first failing model family instead of training the others.
    fail_fast: bool = False
    # Register and promote the winner (off for dry runs).
    register: bool = True


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)


def to_dataclass(schema: type, node: Any) -> Any:
    """Turn a config node (DictConfig or dict) into an instance of ``schema``, with the
    schema's type checks and nested dataclasses (e.g. ``DataConfig.columns``)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=True)
    merged = OmegaConf.merge(OmegaConf.structured(schema), node)
    return OmegaConf.to_object(merged)


def compose_train(
    overrides: list[str], *, root: str | Any, store: str | Any, experiment: str = "clv"
) -> Any:
    """Compose ``conf/train.yaml`` in code (tests, benchmarks), pointed at ``store``.

    The paths that a Hydra launch would fill in (root, output folder) are given
    explicitly, so the result resolves without a running Hydra app.
    """
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    register_configs()
    conf_dir = Path(root) / "conf"
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.root={root}",
                f"paths.mlruns={store}",
                f"paths.output_dir={Path(store) / 'outputs'}",
                f"mlflow.experiment={experiment}",
                "tuning.show_progress_bar=false",
                *overrides,
            ],
        )
