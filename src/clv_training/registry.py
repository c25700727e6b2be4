"""Model registry: every trained winner becomes ``challenger``; the rules below decide
whether it also becomes ``champion``.

MLflow keeps no history of aliases, so every decision is written as version tags
(``promotion.*``) on the versions involved.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class Decision:
    """What happened to a candidate version and why."""

    version: str
    promoted: bool
    reason: str
    previous_champion: str | None


def _champion(client: MlflowClient, name: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _float(tags: dict[str, str], key: str) -> float | None:
    try:
        return float(tags[key])
    except (KeyError, TypeError, ValueError):
        return None


def decide(
    candidate_tags: dict[str, str],
    champion_tags: dict[str, str] | None,
    *,
    metric: str,
    greater_is_better: bool,
    coverage_tolerance: float,
    promote_on_window_change: bool,
    nominal: float = 0.9,
) -> tuple[bool, str]:
    """Pure promotion rule on the ``test_*`` metrics and ``test_window`` stored as tags.

    Returns
    -------
    (promote, reason)
    """
    key = f"test_{metric}"
    challenger_value = _float(candidate_tags, key)
    coverage = _float(candidate_tags, "test_coverage_90")
    if champion_tags is None:
        return True, "no champion yet"
    if challenger_value is None:
        return False, f"challenger has no {key}"
    if coverage is None or abs(coverage - nominal) > coverage_tolerance:
        return False, (
            f"challenger test_coverage_90={coverage} is outside {nominal} +/- "
            f"{coverage_tolerance}"
        )
    champion_value = _float(champion_tags, key)
    same_window = champion_tags.get("test_window") == candidate_tags.get("test_window")
    if not same_window or champion_value is None:
        if promote_on_window_change:
            return True, (
                f"champion was measured on another test window "
                f"({champion_tags.get('test_window')} vs {candidate_tags.get('test_window')}); "
                "promotion.promote_on_window_change=true"
            )
        return False, "champion was measured on another test window; not comparable"
    better = (
        challenger_value > champion_value
        if greater_is_better
        else challenger_value < champion_value
    )
    comparison = f"{key}: challenger {challenger_value:.4f} vs champion {champion_value:.4f}"
    if better:
        return True, f"challenger beats champion on {comparison}"
    if challenger_value == champion_value:
        return False, f"champion stays: a tie on {comparison}"
    return False, f"champion stays: challenger does not beat it on {comparison}"


def register(model_uri: str, name: str, tags: dict[str, str]) -> str:
    """Register ``model_uri`` as a new version of ``name`` with ``tags``; alias it
    ``challenger``. Returns the version."""
    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass  # exists already (or another job created it a moment ago)
    run_id = tags.get("run_id")
    # A logged model's URI (models:/m-<id>) must come with its model id: a SQLite store
    # accepts it without, but a tracking server refuses the version ("Invalid model version
    # source").
    model_id = None
    if model_uri.startswith("models:/m-"):
        model_id = model_uri.removeprefix("models:/").split("/", 1)[0]
    mv = client.create_model_version(
        name, model_uri, run_id=run_id, tags=tags, model_id=model_id
    )
    client.set_registered_model_alias(name, CHALLENGER, mv.version)
    log.info("registered %s version %s (alias %s)", name, mv.version, CHALLENGER)
    return str(mv.version)


def promote(name: str, version: str, reason: str, extra_tags: dict[str, str] | None = None):
    """Point ``champion`` at ``version`` and write the promotion record as version tags."""
    client = MlflowClient()
    previous = _champion(client, name)
    previous_version = None if previous is None else str(previous.version)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    record = {
        "promotion.promoted_at": stamp,
        "promotion.reason": reason,
        "promotion.previous_champion": previous_version or "none",
        **(extra_tags or {}),
    }
    for key, value in record.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.set_registered_model_alias(name, CHAMPION, version)
    if previous_version and previous_version != str(version):
        client.set_model_version_tag(
            name, previous_version, "promotion.replaced_by", f"{version} at {stamp}"
        )
    log.info("%s version %s is now %s (%s)", name, version, CHAMPION, reason)
    return Decision(str(version), True, reason, previous_version)


def consider(
    name: str,
    version: str,
    *,
    metric: str,
    greater_is_better: bool,
    coverage_tolerance: float,
    promote_on_window_change: bool,
    extra_tags: dict[str, str] | None = None,
) -> Decision:
    """Apply :func:`decide` to a registered challenger and act on it."""
    client = MlflowClient()
    candidate = client.get_model_version(name, version)
    champion = _champion(client, name)
    champion_tags = None if champion is None else dict(champion.tags)
    promote_it, reason = decide(
        dict(candidate.tags),
        champion_tags,
        metric=metric,
        greater_is_better=greater_is_better,
        coverage_tolerance=coverage_tolerance,
        promote_on_window_change=promote_on_window_change,
    )
    compared = {
        f"promotion.challenger_test_{metric}": candidate.tags.get(f"test_{metric}", "none"),
        f"promotion.champion_test_{metric}": (champion_tags or {}).get(f"test_{metric}", "none"),
        "promotion.challenger_test_coverage_90": candidate.tags.get("test_coverage_90", "none"),
    }
    if promote_it:
        return promote(name, version, reason, {**compared, **(extra_tags or {})})
    client.set_model_version_tag(name, version, "promotion.decision", reason)
    for key, value in compared.items():
        client.set_model_version_tag(name, version, key, str(value))
    log.warning("%s version %s is challenger, not champion (%s)", name, version, reason)
    previous = None if champion is None else str(champion.version)
    return Decision(str(version), False, reason, previous)
