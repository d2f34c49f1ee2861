"""Task ``deploy``: compare the Challenger with the Champion offline and promote it if it is better.

Both models are scored on the same rows: the Challenger's out-of-time held-out rows (the latest part
of its range) that the Champion did not train on either (nor sit in its gap); after drift, neither
model has seen them. The pickup range of those rows is recorded with the decision
(``promotion_compared_on``). When there are fewer than MIN_COMPARISON_ROWS of them, the
comparison says so and the Challenger is not promoted. The Challenger is promoted when its rmse is
at most the Champion's x (1 + promotion_tolerance).
With no Champion yet it must beat the fare heuristic (per mile plus per minute) fitted on the
training rows of that split. A version not tagged PASSED is never promoted.

With ``require_approval`` the decision is recorded and the version tagged ``approval=pending``;
the aliases stay as they are until ``mlops model approve``. A pinned Champion (``mlops model
pin``, or a rollback) is never moved: the decision is ``pinned`` and says by whom and why.

The move is compare-and-set against the Champion the comparison used. When another move got
there first, the Challenger is compared again with the new Champion, once; a second loss fails
the task naming both versions.
"""
import logging
from dataclasses import dataclass

import mlflow
from taxi_fares import evaluation, features

from mlops.config import TrainingConfig
from mlops.lifecycle.registry import (APPROVAL_PENDING, APPROVAL_TAG, CHAMPION, ChampionMoved, ModelRef,
                                      RegistryClient, utc_now)
from mlops.stages.run import TaskRun
from mlops.stages.validation import Split, load_held_out, load_model, predict, resolve_model


logger = logging.getLogger(__name__)

PROMOTED = "promoted"
NOT_PROMOTED = "not_promoted"
PENDING_APPROVAL = "pending_approval"
ALREADY_CHAMPION = "already_champion"
PINNED = "pinned"
SKIPPED = "skipped"
MAX_COMPARISONS = 2
MIN_COMPARISON_ROWS = 50
HEURISTIC = "heuristic"

DECISION_TAG = "promotion_decision"
COMPARED_WITH_TAG = "promotion_compared_with"
COMPARED_ON_TAG = "promotion_compared_on"


@dataclass(frozen=True)
class Comparison:
    """Challenger and reference metrics on the same rows, and whether the Challenger wins."""

    compared_with: str
    challenger: dict
    reference: dict
    challenger_wins: bool
    rule: str
    rows: int
    compared_on: str = ""


@dataclass(frozen=True)
class PromotionDecision:
    challenger: ModelRef
    decision: str
    comparison: Comparison | None
    champion_before: str | None
    champion_after: str | None
    reason: str = ""

    def task_values(self) -> dict:
        return {**self.challenger.task_values(), "promotion_decision": self.decision,
                "promotion_reason": self.reason, "champion_version": self.champion_after or ""}


def compare_with_champion(challenger_metrics: dict, champion_metrics: dict, champion_version: str,
                          tolerance: float, rows: int, compared_on: str = "") -> Comparison:
    bar = champion_metrics["rmse"] * (1 + tolerance)
    wins = challenger_metrics["rmse"] <= bar
    rule = (f"challenger rmse {challenger_metrics['rmse']:.4f} {'<=' if wins else '>'} {bar:.4f} "
            f"= {CHAMPION} v{champion_version} rmse {champion_metrics['rmse']:.4f} x (1 + {tolerance})")
    return Comparison(f"{CHAMPION} v{champion_version}", challenger_metrics, champion_metrics, wins, rule,
                      rows, compared_on)


def compare_with_heuristic(challenger_metrics: dict, heuristic_metrics: dict, rows: int,
                           compared_on: str = "") -> Comparison:
    wins = challenger_metrics["rmse"] < heuristic_metrics["rmse"]
    rule = (f"no {CHAMPION} yet: challenger rmse {challenger_metrics['rmse']:.4f} "
            f"{'<' if wins else '>='} heuristic rmse {heuristic_metrics['rmse']:.4f}")
    return Comparison(HEURISTIC, challenger_metrics, heuristic_metrics, wins, rule, rows, compared_on)


def decide(comparison: Comparison, require_approval: bool) -> str:
    if not comparison.challenger_wins:
        return NOT_PROMOTED
    return PENDING_APPROVAL if require_approval else PROMOTED


def _compare(run: TaskRun[TrainingConfig], registry: RegistryClient, challenger: ModelRef,
             champion_version: str | None) -> Comparison:
    split = Split.of_training_run(registry.training_run(challenger.version))
    data = load_held_out(run.tables, split, run.config.validation_sample_rows,
                         with_training_rows=champion_version is None)
    if champion_version is None:
        label = data.rows[features.LABEL_COLUMN].to_numpy(dtype=float)
        challenger_metrics = evaluation.regression_metrics(label, predict(load_model(challenger), data.rows))
        heuristic = evaluation.fit_fare_heuristic(data.training_rows)
        heuristic_metrics = evaluation.regression_metrics(label, heuristic.predict(data.rows))
        return compare_with_heuristic(challenger_metrics, heuristic_metrics, len(data.rows),
                                      pickup_range(data.rows))
    champion_split = Split.of_training_run(registry.training_run(champion_version)).by_time
    rows = data.rows[champion_split.not_trained_on(data.rows[features.PICKUP])]
    if len(rows) < MIN_COMPARISON_ROWS:
        return no_fair_comparison(champion_version, len(data.rows), len(rows), champion_split)
    label = rows[features.LABEL_COLUMN].to_numpy(dtype=float)
    challenger_metrics = evaluation.regression_metrics(label, predict(load_model(challenger), rows))
    champion = registry.resolve(champion_version)
    champion_metrics = evaluation.regression_metrics(label, predict(load_model(champion), rows))
    return compare_with_champion(challenger_metrics, champion_metrics, champion_version,
                                 run.config.promotion_tolerance, len(rows), pickup_range(rows))


def pickup_range(rows) -> str:
    """The pickup times the comparison rows span, as recorded with the decision."""
    pickups = rows[features.PICKUP]
    return f"{pickups.min():%Y-%m-%dT%H:%M}..{pickups.max():%Y-%m-%dT%H:%M}"


def no_fair_comparison(champion_version: str, held_out: int, usable: int, champion_split) -> Comparison:
    """Too few held-out rows that the Champion did not train on: no verdict, so no promotion."""
    ranges = champion_split.describe()
    rule = (f"no fair comparison: {usable} of the Challenger's {held_out} held-out rows were not in the "
            f"{CHAMPION} v{champion_version}'s training range {ranges['train_range']} or its gap "
            f"(at least {MIN_COMPARISON_ROWS} are needed); train on a later range to compare")
    return Comparison(f"{CHAMPION} v{champion_version}", {}, {}, False, rule, usable)


def promote_challenger(run: TaskRun[TrainingConfig]) -> PromotionDecision:
    """Compare, decide, record, and move the Champion alias when the decision is to promote."""
    config = run.config
    registry = RegistryClient.from_config(config)
    challenger = resolve_model(run, registry, upstream_task="validate", switch_parameter="execute_validation")
    run.annotate(model_version=challenger.version)
    registry.require_passed(challenger.version, "promote")
    for attempt in range(1, MAX_COMPARISONS + 1):
        try:
            result = _decide_and_move(run, registry, challenger)
            break
        except ChampionMoved as moved:
            if attempt == MAX_COMPARISONS:
                raise
            logger.warning("the Champion moved to version %s during the comparison; comparing again",
                           moved.found)
    _record(run, registry, result)
    for key, value in result.task_values().items():
        run.set_task_value(key, value)
    logger.info("model %s version %s: %s (%s)", challenger.name, challenger.version, result.decision,
                result.reason)
    return result


def _decide_and_move(run: TaskRun[TrainingConfig], registry: RegistryClient,
                     challenger: ModelRef) -> PromotionDecision:
    champion_before = registry.alias_version(CHAMPION)
    if champion_before == challenger.version:
        return PromotionDecision(challenger, ALREADY_CHAMPION, None, champion_before, champion_before,
                                 "it already is the Champion")
    comparison = _compare(run, registry, challenger, champion_before)
    decision = decide(comparison, run.config.require_approval)
    reason = comparison.rule
    pin = registry.pinned()
    if decision == PROMOTED and pin:
        decision = PINNED
        reason = (f"{comparison.rule}; not moved: the {CHAMPION} is pinned by {pin['by']} ({pin['reason']}); "
                  f"`mlops model unpin {registry.name}` restarts automatic promotion")
    if decision == PROMOTED:
        registry.move_champion(challenger.version, champion_before,
                               by=f"job {run.job.job_name} run {run.job.job_run_id}", via="promotion")
    return PromotionDecision(challenger, decision, comparison, champion_before,
                             registry.alias_version(CHAMPION), reason)


def _record(run: TaskRun[TrainingConfig], registry: RegistryClient, result: PromotionDecision):
    """The decision and both models' metrics, in the deploy run and as tags on the version."""
    comparison = result.comparison
    mlflow.set_tags({"model_name": result.challenger.name, "model_version": result.challenger.version,
                     DECISION_TAG: result.decision,
                     "champion_version_before": result.champion_before or "none",
                     "champion_version_after": result.champion_after or "none"})
    version_tags = {DECISION_TAG: result.decision, "promotion_decided_at": utc_now(),
                    "promotion_run_id": run.mlflow_run_id or ""}
    if comparison is not None:
        reference = "heuristic" if comparison.compared_with == HEURISTIC else "champion"
        mlflow.log_metrics({"held_out_rows": comparison.rows}
                           | {f"challenger_{name}": value for name, value in comparison.challenger.items()}
                           | {f"{reference}_{name}": value for name, value in comparison.reference.items()})
        comparison_tags = {COMPARED_WITH_TAG: comparison.compared_with, "promotion_rule": comparison.rule,
                           COMPARED_ON_TAG: comparison.compared_on or "none"}
        mlflow.set_tags(comparison_tags)
        version_tags |= comparison_tags | {"promotion_rows": comparison.rows}
        if comparison.challenger:
            version_tags |= {"promotion_challenger_rmse": f"{comparison.challenger['rmse']:.6f}",
                             "promotion_reference_rmse": f"{comparison.reference['rmse']:.6f}"}
    if result.decision == PENDING_APPROVAL:
        version_tags[APPROVAL_TAG] = APPROVAL_PENDING
    registry.set_tags(result.challenger.version, version_tags)
    registry.history.append("deploy decision", result.challenger.version,
                            f"job {run.job.job_name} run {run.job.job_run_id}",
                            promotion_decision=result.decision, reason=result.reason,
                            promotion_compared_with=comparison.compared_with if comparison else None,
                            promotion_compared_on=comparison.compared_on if comparison else None)
