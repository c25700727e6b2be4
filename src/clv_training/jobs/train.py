"""The training job behind ``make train``.

Validate the log -> plan cutoffs -> build examples -> tune and test every model family ->
fit the churn model -> choose the winner on validation -> refit it on the latest window
-> log it as a pyfunc -> register it as ``challenger`` -> promote it if it beats the
champion. Run with ``python -m clv_training.jobs.train key=value ...``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import mlflow
import numpy as np
import optuna
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from clv_training import registry, tracking, tuning
from clv_training.config import (
    DataConfig,
    FeaturesConfig,
    SplitConfig,
    register_configs,
    to_dataclass,
)
from clv_training.data import CUSTOMER_ID, TIMESTAMP
from clv_training.data.contract import prepare_transactions
from clv_training.data.load import read_raw
from clv_training.evaluation import metrics as M
from clv_training.evaluation import plots
from clv_training.features.btyd import BTYDFeatures
from clv_training.features.build import build_features
from clv_training.features.engine import engine_name
from clv_training.intervals import ConformalIntervals
from clv_training.models import make_model
from clv_training.models.base import CLVModel, ModelFitError
from clv_training.models.churn import ChurnModel
from clv_training.pipeline import CLVPipeline
from clv_training.segments import SegmentRule
from clv_training.serving import input_example, load_and_check, log_pipeline
from clv_training.split import (
    CUTOFF,
    CutoffPlan,
    is_calibration_customer,
    make_examples,
    plan_cutoffs,
)

log = logging.getLogger(__name__)

# The pruning callback is marked experimental; the warning repeats once per trial.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")
FAMILIES = ("formula", "btyd", "sklearn", "catboost")
TARGET = "target_spend"

register_configs()


@dataclass
class FamilyResult:
    """One family's outcome on the validation and test windows."""

    family: str
    status: str
    run_id: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    diagnostic: str = ""
    test_pred: np.ndarray | None = None


@dataclass
class Windows:
    """The example rows of each fit (see docs/ARCHITECTURE.md, "Cutoffs")."""

    plan: CutoffPlan
    examples: pd.DataFrame

    def rows(self, cutoffs, *, calibration: bool | None = None) -> pd.DataFrame:
        mask = self.examples["cutoff"].isin(list(cutoffs))
        if calibration is not None:
            mask &= self.examples["calibration"] == calibration
        return self.examples[mask].reset_index(drop=True)

    def at(self, cutoff, *, calibration: bool | None = None) -> pd.DataFrame:
        return self.rows([cutoff], calibration=calibration)


def _sigterm_to_interrupt(signum, frame):  # pragma: no cover - exercised by the fault test
    raise KeyboardInterrupt(f"signal {signum}")


def _selection(cfg: DictConfig) -> tuple[str, bool]:
    return str(cfg.selection.metric), bool(cfg.selection.greater_is_better)


def sample_rows(frame: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """A seeded sample of at most ``max_rows`` rows of ``frame``, in their original order.

    Parameters
    ----------
    frame : pandas.DataFrame
        Example rows (any index).
    max_rows : int or None
        Row cap; None, or a frame no longer than the cap, returns ``frame`` unchanged.
    seed : int
        Seed of the sample (the same rows and seed give the same sample).

    Returns
    -------
    pandas.DataFrame
        ``frame`` itself, or ``max_rows`` of its rows with a fresh 0..n-1 index.
    """
    if max_rows is None or len(frame) <= int(max_rows):
        return frame
    if int(max_rows) < 1:
        raise ValueError(f"a row cap must be >= 1, got {max_rows}")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(frame), int(max_rows), replace=False))
    return frame.iloc[keep].reset_index(drop=True)


def _row_cap(*caps: int | None) -> int | None:
    """The smallest of the caps that are set (None when none is)."""
    found = [int(c) for c in caps if c is not None]
    return min(found) if found else None


def _fit(
    family: str,
    params: dict,
    cfg: DictConfig,
    windows: Windows,
    cutoffs,
    *,
    max_rows: int | None = None,
    **fit_kwargs,
) -> CLVModel:
    """Fit a family on the rows of ``cutoffs`` that are not held out for calibration.

    ``max_rows`` (default: ``models.<family>.max_train_rows``) caps the rows with a seeded
    sample, for logs whose examples run into the millions.
    """
    train = windows.rows(cutoffs, calibration=False)
    if max_rows is None:
        max_rows = cfg.models[family].get("max_train_rows")
    if max_rows is not None and len(train) > int(max_rows):
        log.info("%s: fitting on a seeded sample of %d of %d example rows",
                 family, int(max_rows), len(train))
        train = sample_rows(train, max_rows, int(cfg.seed))
    model = make_model(family, params, int(cfg.horizon_days), int(cfg.seed))
    return model.fit(train, train[TARGET].to_numpy(float), **fit_kwargs)


def _interval_bounds(intervals: ConformalIntervals, pred: np.ndarray):
    bounds = intervals.predict(pred)
    lower = {level: lo for level, (lo, _) in bounds.items()}
    upper = {level: hi for level, (_, hi) in bounds.items()}
    return lower, upper


def make_objective(family: str, cfg: DictConfig, windows: Windows):
    """The family's Optuna objective: fit on the tuning windows, score on validation.

    Returns ``objective(params, trial) -> val_<selection.metric>``; the fixed params of
    ``models.<family>.params`` are merged under the trial's.
    """
    plan = windows.plan
    model_cfg = cfg.models[family]
    fixed = OmegaConf.to_container(model_cfg.params, resolve=True) or {}
    metric, _ = _selection(cfg)
    val = windows.at(plan.validation)
    y_val = val[TARGET].to_numpy(float)
    # Optuna trials may fit on fewer rows than the family's other fits (tuning.max_train_rows);
    # the cap is part of the study's set-up hash (study_setup), so a new cap starts a study.
    trial_rows = _row_cap(cfg.tuning.get("max_train_rows"), model_cfg.get("max_train_rows"))

    def objective(params: dict, trial: optuna.Trial | None) -> float:
        kwargs: dict[str, Any] = {}
        if family == "catboost" and trial is not None and cfg.tuning.pruning:
            from optuna_integration import CatBoostPruningCallback

            probe = make_model(family, {**fixed, **params}, int(cfg.horizon_days), 0)
            # The pruning curve needs no more validation rows than the trial fits on.
            probe_val = sample_rows(val, trial_rows, int(cfg.seed))
            kwargs = {
                "eval_set": (probe_val, probe_val[TARGET].to_numpy(float)),
                "callbacks": [CatBoostPruningCallback(trial, probe.eval_metric_name)],
            }
        model = _fit(family, {**fixed, **params}, cfg, windows, plan.tuning_cutoffs,
                     max_rows=trial_rows, **kwargs)
        for callback in kwargs.get("callbacks", []):
            callback.check_pruned()
        pred = model.predict(val)
        return M.regression_metrics(y_val, pred, "val")[f"val_{metric}"]

    return objective


def study_setup(cfg: DictConfig, family: str) -> str:
    """Short hash of what gives a trial's value its meaning, beyond data, seed and cutoff.

    Two processes whose metric, search space, fixed parameters, features, split or trial
    row cap differ get different studies; the feature engine is left out (both engines
    give the same features, so a Spark run resumes the DuckDB run's studies).
    """
    features = OmegaConf.to_container(cfg.features, resolve=True)
    for key in ("engine", "spark_master", "spark_conf", "duckdb_memory_limit",
                "duckdb_temp_directory"):
        features.pop(key, None)
    model = OmegaConf.to_container(cfg.models[family], resolve=True)
    setup = {
        "selection": OmegaConf.to_container(cfg.selection, resolve=True),
        "search": model.get("search"),
        "params": model.get("params"),
        "max_train_rows": model.get("max_train_rows"),
        "trial_rows": cfg.tuning.max_train_rows,
        "features": features,
        "split": OmegaConf.to_container(cfg.split, resolve=True),
        "horizon_days": int(cfg.horizon_days),
    }
    text = json.dumps(setup, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def tune_family(
    family: str,
    cfg: DictConfig,
    windows: Windows,
    storage,
    digest: str,
    *,
    role: str = "train",
    sampler_seed: int | None = None,
    wait_for_workers_seconds: float = 0.0,
) -> tuple[dict[str, Any], str | None, optuna.Study | None]:
    """Run the family's share of its study (the train job and every tune worker).

    Returns the best params (empty when the family has no search space), the study name
    and the study (both None without a search space).
    """
    search = OmegaConf.to_container(cfg.models[family].search, resolve=True) or {}
    if not search:
        return {}, None, None
    metric, greater = _selection(cfg)
    name = tuning.study_name(
        cfg.tuning.study_prefix, family, digest, int(cfg.seed),
        str(windows.plan.validation.date()), study_setup(cfg, family),
    )
    best, _, study = tuning.tune(
        family,
        search,
        make_objective(family, cfg, windows),
        n_trials=int(cfg.tuning.n_trials),
        seed=int(cfg.seed),
        storage=storage,
        name=name,
        greater_is_better=greater,
        metric=f"val_{metric}",
        timeout=cfg.tuning.timeout_seconds,
        show_progress_bar=bool(cfg.tuning.show_progress_bar),
        role=role,
        sampler_seed=sampler_seed,
        wait_for_workers_seconds=wait_for_workers_seconds,
    )
    return best, name, study


def train_family(family: str, cfg: DictConfig, windows: Windows, storage, digest: str):
    """Tune (if the family has a search space), then fit and score on the test window."""
    plan = windows.plan
    model_cfg = cfg.models[family]
    fixed = OmegaConf.to_container(model_cfg.params, resolve=True) or {}
    metric, greater = _selection(cfg)
    val = windows.at(plan.validation)
    y_val = val[TARGET].to_numpy(float)
    mlflow.log_params({f"fixed.{k}": v for k, v in fixed.items()})
    best, name, study = tune_family(
        family, cfg, windows, storage, digest,
        wait_for_workers_seconds=float(cfg.tuning.wait_for_workers_seconds),
    )
    if study is not None:
        mlflow.set_tags({"optuna_study": name, "optuna_trials": len(study.trials)})
    params = {**fixed, **best}
    mlflow.log_params({f"best.{k}": v for k, v in best.items()})

    # Validation metrics of the chosen params (the figures model choice uses).
    model = _fit(family, params, cfg, windows, plan.tuning_cutoffs)
    val_metrics = M.regression_metrics(y_val, model.predict(val), "val")

    # Test: fit on every window that ends by the test cutoff; calibrate on held-out
    # customers at the validation cutoff; score the test window.
    model = _fit(family, params, cfg, windows, plan.test_fit_cutoffs)
    cal = windows.at(plan.validation, calibration=True)
    intervals = ConformalIntervals(
        levels=tuple(cfg.intervals.levels), n_bins=int(cfg.intervals.n_bins)
    ).fit(model.predict(cal), cal[TARGET].to_numpy(float))
    test = windows.at(plan.test)
    y_test = test[TARGET].to_numpy(float)
    pred = model.predict(test)
    lower, upper = _interval_bounds(intervals, pred)
    test_metrics = {
        **M.regression_metrics(y_test, pred, "test"),
        **M.interval_metrics(y_test, lower, upper, "test"),
    }
    extra = _family_extras(family, model, test)
    metrics = {**val_metrics, **test_metrics, **extra}
    mlflow.log_metrics(metrics)

    table = M.coverage_table(y_test, pred, lower, upper)
    tracking.log_frame(table, "evaluation/coverage_table.csv")
    tracking.log_frame(M.decile_table(y_test, pred), "evaluation/decile_table.csv")
    tracking.log_figure(
        plots.plot_decile_calibration(y_test, pred, f"{family}: test window by decile"),
        "plots/decile_calibration.png",
    )
    tracking.log_figure(plots.plot_coverage(table, list(cfg.intervals.levels)),
                        "plots/coverage.png")
    tracking.log_figure(plots.plot_gains_curve({family: (y_test, pred)}), "plots/gains.png")
    importance = model.feature_importance()
    if importance is not None:
        tracking.log_figure(
            plots.plot_feature_importance(importance, f"{family}: feature importance"),
            "plots/feature_importance.png",
        )
    diagnostics = model.fit_diagnostics() or {}
    if diagnostics:
        mlflow.log_metrics({f"fit_{k}": float(v) for k, v in diagnostics.items()})
    return params, metrics, pred


def _family_extras(family: str, model: CLVModel, test: pd.DataFrame) -> dict[str, float]:
    """BG/NBD's own churn estimate, set beside the classifier's."""
    if family != "btyd" or not hasattr(model, "prob_no_purchase"):
        return {}
    churned = (test["target_occasions"].to_numpy() == 0).astype(int)
    prob = np.clip(np.asarray(model.prob_no_purchase(test), dtype=float), 0.0, 1.0)
    found = M.churn_metrics(churned, prob, "test")
    return {f"{k}_btyd": v for k, v in found.items()}


def fit_churn(cfg: DictConfig, windows: Windows, train_cutoffs, cal_cutoff) -> ChurnModel:
    train = windows.rows(train_cutoffs, calibration=False)
    max_rows = cfg.churn.get("max_train_rows")
    if max_rows is not None and len(train) > int(max_rows):
        log.info("churn: fitting on a seeded sample of %d of %d example rows",
                 int(max_rows), len(train))
        train = sample_rows(train, max_rows, int(cfg.seed))
    cal = windows.at(cal_cutoff, calibration=True)
    params = OmegaConf.to_container(cfg.churn.params, resolve=True)
    churn = ChurnModel(params=params, seed=int(cfg.seed))
    churn.fit(train, (train["target_occasions"].to_numpy() == 0).astype(int))
    churn.calibrate(
        cal, (cal["target_occasions"].to_numpy() == 0).astype(int), method=cfg.churn.calibration
    )
    return churn


def evaluate_churn(cfg: DictConfig, windows: Windows) -> tuple[ChurnModel, dict[str, float]]:
    plan = windows.plan
    churn = fit_churn(cfg, windows, plan.test_fit_cutoffs, plan.validation)
    test = windows.at(plan.test)
    churned = (test["target_occasions"].to_numpy() == 0).astype(int)
    prob = churn.predict_proba(test)
    found = M.churn_metrics(churned, prob, "test")
    tracking.log_figure(plots.plot_reliability(churned, prob, "churn: test window"),
                        "plots/churn_reliability.png")
    tracking.log_frame(M.reliability_table(churned, prob), "evaluation/churn_reliability.csv")
    return churn, found


def leaderboard(results: dict[str, FamilyResult], metric: str) -> pd.DataFrame:
    columns = [
        f"val_{metric}", "test_rmse", "test_mae", "test_spearman", "test_gini",
        "test_decile_mape", "test_top_decile_capture", "test_total_error",
        "test_coverage_80", "test_coverage_90", "test_width_90", "test_churn_auc",
    ]
    rows = []
    for family, result in results.items():
        row = {"family": family, "status": result.status}
        row.update({c: result.metrics.get(c, np.nan) for c in columns})
        rows.append(row)
    return pd.DataFrame(rows).set_index("family")


def choose_winner(results: dict[str, FamilyResult], metric: str, greater: bool) -> str:
    ok = {f: r for f, r in results.items() if r.status == "ok"}
    if not ok:
        raise RuntimeError(
            "every model family failed: "
            + "; ".join(f"{f}: {r.diagnostic}" for f, r in results.items())
        )
    key = f"val_{metric}"
    ranked = sorted(ok, key=lambda f: ok[f].metrics[key], reverse=greater)
    return ranked[0]


def build_final_pipeline(
    cfg: DictConfig, windows: Windows, family: str, params: dict
) -> CLVPipeline:
    """Refit the winner on every window up to the observation end (the registered model)."""
    plan = windows.plan
    model = _fit(family, params, cfg, windows, plan.final_cutoffs)
    cal = windows.at(plan.test, calibration=True)
    intervals = ConformalIntervals(
        levels=tuple(cfg.intervals.levels), n_bins=int(cfg.intervals.n_bins)
    ).fit(model.predict(cal), cal[TARGET].to_numpy(float))
    churn = fit_churn(cfg, windows, plan.final_cutoffs, plan.test)
    latest = windows.at(plan.test)
    segments = SegmentRule(
        high_quantile=float(cfg.segments.high_quantile),
        medium_quantile=float(cfg.segments.medium_quantile),
        at_risk_churn_probability=float(cfg.segments.at_risk_churn_probability),
    ).fit(model.predict(latest))
    return CLVPipeline(
        family=family,
        model=model,
        intervals=intervals,
        churn=churn,
        segments=segments,
        horizon_days=int(cfg.horizon_days),
        features_cfg=OmegaConf.to_container(cfg.features, resolve=True),
        segments_cfg=OmegaConf.to_container(cfg.segments, resolve=True),
        data_policy={
            "timezone": str(cfg.data.timezone),
            "duplicates": str(cfg.data.duplicates),
            "occasion_policy": str(cfg.data.occasion_policy),
        },
        metadata={"params": params, "observation_end": str(plan.observation_end.date())},
    )


@dataclass
class Prepared:
    """The validated log and its example rows: what the train job and a tune worker share."""

    prepared: Any
    plan: CutoffPlan
    windows: Windows
    digest: str
    features: FeaturesConfig
    btyd_hook: BTYDFeatures | None
    # Hash of every example row (features, targets): equal across engines.
    features_digest: str = ""

    @property
    def tx(self) -> pd.DataFrame:
        return self.prepared.transactions


def prepare(cfg: DictConfig) -> Prepared:
    """Validate the log, plan the cutoffs and build the example rows of every window.

    The same config gives the same data digest, hence the same study names, in the train
    job and in every ``make tune-worker``.
    """
    root = Path(cfg.paths.root)
    feat_cfg = to_dataclass(FeaturesConfig, cfg.features)
    feat_cfg.engine = engine_name(feat_cfg)  # checked before any data is read
    data_cfg = to_dataclass(DataConfig, cfg.data)
    raw = read_raw(data_cfg, root=root)
    prepared = prepare_transactions(raw, data_cfg)
    tx = prepared.transactions
    first_day = tx[TIMESTAMP].min().normalize()
    split_cfg = to_dataclass(SplitConfig, cfg.split)
    plan = plan_cutoffs(first_day, prepared.observation_end, int(cfg.horizon_days), split_cfg)
    log.info(
        "cutoffs: train %s, validation %s, test %s, observation end %s (horizon %d days)",
        [str(c.date()) for c in plan.train], plan.validation.date(), plan.test.date(),
        plan.observation_end.date(), cfg.horizon_days,
    )
    btyd_hook = None
    if feat_cfg.btyd_features:
        btyd_hook = BTYDFeatures(
            int(cfg.horizon_days),
            int(cfg.seed),
            max_fit_customers=cfg.models.btyd.params.get("max_fit_customers"),
        )
    examples = make_examples(
        tx, plan.final_cutoffs, int(cfg.horizon_days), feat_cfg, extra=btyd_hook
    )
    examples["calibration"] = is_calibration_customer(
        examples[CUSTOMER_ID], float(cfg.split.calibration_fraction), int(cfg.seed)
    )
    windows = Windows(plan=plan, examples=examples)
    features_digest = tracking.frame_digest(examples, [CUTOFF, CUSTOMER_ID])
    log.info("example rows: %d (features digest %s, engine %s)", len(examples),
             features_digest, feat_cfg.engine)
    return Prepared(
        prepared, plan, windows, tracking.data_digest(tx), feat_cfg, btyd_hook,
        features_digest,
    )


def open_storage(cfg: DictConfig):
    """The Optuna storage of ``tuning.storage`` with the heartbeat settings of the config."""
    return tuning.make_storage(
        cfg.tuning.storage,
        cfg.paths.mlruns,
        heartbeat_seconds=int(cfg.tuning.heartbeat_seconds),
        grace_seconds=int(cfg.tuning.grace_seconds),
        max_retry=cfg.tuning.max_retry,
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole job; returns ids and figures for callers and tests."""
    started = time.monotonic()
    root = Path(cfg.paths.root)
    metric, greater = _selection(cfg)

    # Storage first: a refused tuning.storage fails before minutes of data work.
    storage = open_storage(cfg)
    if float(cfg.tuning.wait_for_workers_seconds) < 0:
        raise ValueError(
            "tuning.wait_for_workers_seconds must be >= 0 (0: do not wait for other "
            f"workers' trials), got {cfg.tuning.wait_for_workers_seconds}"
        )
    data = prepare(cfg)
    prepared, plan, windows, digest = data.prepared, data.plan, data.windows, data.digest
    tx, feat_cfg, btyd_hook = data.tx, data.features, data.btyd_hook

    tracking.setup_mlflow(cfg.mlflow.tracking_uri, cfg.mlflow.artifact_root, cfg.mlflow.experiment)
    tags = {
        "git_commit": tracking.git_commit(root),
        "data_digest": digest,
        "features_digest": data.features_digest,
        "features_engine": str(feat_cfg.engine),
        "dataset": str(cfg.data.name),
        "cutoff_test": str(plan.test.date()),
        "cutoff_validation": str(plan.validation.date()),
        "cutoffs_train": ",".join(str(c.date()) for c in plan.train),
        "observation_end": str(plan.observation_end.date()),
        "horizon_days": str(cfg.horizon_days),
        **{f"rows.{k}": str(v) for k, v in prepared.counts.items()},
    }
    results: dict[str, FamilyResult] = {}
    with tracking.run(f"train-{cfg.data.name}", tags=tags) as parent:
        tracking.log_params(OmegaConf.to_container(cfg, resolve=True))
        tracking.log_frame(prepared.set_aside, "data/set_aside.csv")
        mlflow.log_dict(prepared.counts, "data/row_counts.json")
        mlflow.log_metrics({f"rows_{k}": float(v) for k, v in prepared.counts.items()})

        for family in FAMILIES:
            if not cfg.models[family].enabled:
                continue
            results[family] = _run_family(family, cfg, windows, storage, digest)

        churn, churn_metrics = evaluate_churn(cfg, windows)
        mlflow.log_metrics(churn_metrics)
        for result in results.values():
            result.metrics.update(churn_metrics)
            if result.status == "ok":
                with mlflow.start_run(run_id=result.run_id, nested=True):
                    mlflow.log_metrics(churn_metrics)

        test = windows.at(plan.test)
        curves = {
            f: (test[TARGET].to_numpy(float), r.test_pred)
            for f, r in results.items()
            if r.test_pred is not None
        }
        if curves:
            tracking.log_figure(plots.plot_gains_curve(curves), "plots/gains_all_families.png")
        board = leaderboard(results, metric)
        tracking.log_frame(board, "leaderboard.csv", index=True)

        winner = choose_winner(results, metric, greater)
        won = results[winner]
        mlflow.set_tags({"winner": winner, "winner_run_id": won.run_id})
        mlflow.log_metrics({k: v for k, v in won.metrics.items() if np.isfinite(v)})
        log.info("winner on val_%s: %s (%.4f)", metric, winner, won.metrics[f"val_{metric}"])

        pipeline = build_final_pipeline(cfg, windows, winner, won.params)
        if btyd_hook is not None:
            at_end = build_features(tx, plan.observation_end, feat_cfg)
            pipeline.btyd_features = btyd_hook.fit_at(at_end, plan.observation_end)
        pipeline.metadata.update({"run_id": parent.info.run_id, "data_digest": digest})
        mlflow.log_dict(pipeline.segments.thresholds(), "model_card/segment_thresholds.json")
        mlflow.log_dict(pipeline.intervals.describe(), "model_card/intervals.json")
        mlflow.log_params({f"segment.{k}": v for k, v in pipeline.segments.thresholds().items()})
        example = input_example(tx)
        version = None
        decision = None
        if cfg.register:
            version, decision = _register(cfg, pipeline, example, won, tags, parent.info.run_id)
        elapsed = time.monotonic() - started
        mlflow.log_metric("job_seconds", elapsed)

    _log_summary(board, winner, metric, version, decision, elapsed)
    return {
        "run_id": parent.info.run_id,
        "winner": winner,
        "version": version,
        "promoted": None if decision is None else decision.promoted,
        "leaderboard": board,
        "results": results,
        "plan": plan,
        "counts": prepared.counts,
    }


def _run_family(family, cfg, windows, storage, digest) -> FamilyResult:
    """Train one family in its own child run; a failure is recorded, not fatal."""
    run_id = ""
    try:
        with tracking.run(family, nested=True, tags={"family": family}) as child:
            run_id = child.info.run_id
            params, found, pred = train_family(family, cfg, windows, storage, digest)
            mlflow.set_tag("status", "ok")
        return FamilyResult(family, "ok", run_id, params, found, test_pred=pred)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001 - one family failing must not stop the others
        diagnostic = (
            error.diagnostic if isinstance(error, ModelFitError) else f"{type(error).__name__}: "
            f"{error}"
        )
        if cfg.fail_fast:
            raise
        log.error("%s failed (the other families go on): %s", family, diagnostic)
        if run_id:
            client = mlflow.MlflowClient()
            client.set_tag(run_id, "status", "failed")
            client.set_tag(run_id, "diagnostic", str(diagnostic)[:5000])
        return FamilyResult(family, "failed", run_id, diagnostic=str(diagnostic))


def _register(cfg, pipeline, example, won: FamilyResult, tags, run_id):
    """Log the pyfunc, prove that it loads, then register and consider promotion."""
    # Limitation: the registry assigns the version number only after the model is logged,
    # and a logged model is immutable, so predictions carry the training run id as their
    # model_version; the registered version's `run_id` tag links the two.
    pipeline = pipeline.with_version(f"run-{run_id}")
    info = log_pipeline(pipeline, example)
    load_and_check(info.model_uri, example)
    metric, greater = _selection(cfg)
    version_tags = {
        "run_id": run_id,
        "family": won.family,
        "test_window": f"{tags['cutoff_test']}..{tags['observation_end']}|{tags['data_digest']}",
        "data_digest": tags["data_digest"],
        "git_commit": tags["git_commit"],
        "horizon_days": tags["horizon_days"],
        **{k: f"{v:.6g}" for k, v in won.metrics.items() if k.startswith("test_")},
    }
    version = registry.register(info.model_uri, cfg.mlflow.model_name, version_tags)
    coverage = won.metrics.get("test_coverage_90", np.nan)
    if abs(coverage - 0.9) > cfg.promotion.coverage_tolerance:
        log.warning(
            "test_coverage_90=%.3f is outside 0.9 +/- %.2f: intervals calibrated on the "
            "validation window %s on the test window (see plots/coverage.png by decile)",
            coverage, cfg.promotion.coverage_tolerance,
            "over-cover" if coverage > 0.9 else "under-cover",
        )
    decision = registry.consider(
        cfg.mlflow.model_name,
        version,
        metric=metric,
        greater_is_better=greater,
        coverage_tolerance=float(cfg.promotion.coverage_tolerance),
        promote_on_window_change=bool(cfg.promotion.promote_on_window_change),
        extra_tags={"git_commit": tags["git_commit"], "data_digest": tags["data_digest"]},
    )
    mlflow.set_tags({"registered_version": version, "promoted": str(decision.promoted)})
    return version, decision


def _log_summary(board, winner, metric, version, decision, elapsed) -> None:
    with pd.option_context("display.width", 200, "display.max_columns", 20,
                           "display.float_format", "{:.4f}".format):
        log.info(
            "leaderboard (test window unless val_; test_churn_auc is the shared churn "
            "classifier's):\n%s", board.to_string(),
        )
    log.info("winner: %s (chosen on val_%s)", winner, metric)
    if version is not None:
        state = "champion" if decision.promoted else "challenger"
        log.info("registered clv version %s as %s: %s", version, state, decision.reason)
    log.info("finished in %.0f s; open the MLflow UI with `make ui`", elapsed)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    run(cfg)


if __name__ == "__main__":
    main()
