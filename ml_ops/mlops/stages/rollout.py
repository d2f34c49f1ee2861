"""Stage ``rollout`` of task ``compare_online``: the Challenger's share moves by the comparison's verdict.

With ``rollout_plan`` set (such as ``10,50,100``), a new Challenger starts at the plan's first
share. At each later run, once the step has ``rollout_rows_per_step`` labelled rows (both arms,
scored since the step began), a Challenger not worse steps up to the next share; at the last step
before 100 one shown no worse is promoted through the compare-and-set Champion move. A
significantly worse Challenger is rolled back to 0% at any look. The share is kept on the
Challenger's version (:mod:`mlops.lifecycle.rollout`), which ``mlops serve --follow-rollout``
reads; on Databricks it also sets the traffic of the serving endpoint ``serving_endpoint_name``.
Each move is a history event of the model with its evidence; the decision is a task value
(``rollout_action``, ``rollout_share``, ``rollout_reason``) and a ``rollout.decision`` event.
"""
import datetime
import logging

from mlops import platform
from mlops.config import MonitoringConfig
from mlops.lifecycle import rollout
from mlops.lifecycle.registry import CHALLENGER, CHAMPION, ChampionMoved, RegistryClient
from mlops.monitoring import online_log
from mlops.monitoring.online_comparison import (HOLD, PROMOTE, ROLL_BACK, STEP_UP, Comparison,
                                                RolloutDecision, RolloutPlan)
from mlops.stages.run import TaskRun

logger = logging.getLogger(__name__)

START = "start"
OFF = "off"
DECISION_EVENT = "rollout.decision"
# The history event of each move the rollout makes.
HISTORY_EVENTS = {START: "rollout started", STEP_UP: "rollout stepped up", ROLL_BACK: "rollout rolled back",
                  PROMOTE: "rollout promoted"}


def advance_rollout(run: TaskRun[MonitoringConfig], comparison: Comparison | None) -> RolloutDecision:
    """Start, hold, step up, roll back or promote the Challenger's rollout; the decision taken."""
    config = run.config
    registry = RegistryClient.from_config(config)
    versions = {alias: registry.alias_version(alias) for alias in (CHAMPION, CHALLENGER)} \
        if registry.exists() else {}
    champion, challenger = versions.get(CHAMPION), versions.get(CHALLENGER)
    if not config.rollout_plan:
        decision = RolloutDecision(OFF, 0, "no rollout_plan: the Challenger's share is left as it is")
    elif comparison is None or not champion or not challenger:
        decision = RolloutDecision(OFF, 0, "no Challenger to roll out")
    else:
        decision = _advance(run, registry, str(champion), str(challenger), comparison)
        client = platform.current().serving_client() if config.serving_endpoint_name else None
        if decision.action != HOLD and client is not None:
            _set_endpoint_traffic(client, config.serving_endpoint_name, registry, decision)
    for key, value in (("rollout_action", decision.action), ("rollout_share", decision.share),
                       ("rollout_reason", decision.reason)):
        run.set_task_value(key, value)
    run.telemetry.track_event(DECISION_EVENT, model_name=config.registered_model_name,
                              challenger_version=challenger or "", action=decision.action,
                              share=decision.share, reason=decision.reason)
    logger.info("rollout: %s at %d%%: %s", decision.action, decision.share, decision.reason)
    return decision


def _advance(run, registry: RegistryClient, champion: str, challenger: str,
             comparison: Comparison) -> RolloutDecision:
    config = run.config
    by = f"job {run.job.job_name} run {run.job.job_run_id}"
    state = rollout.read(registry, challenger)
    if state is None:
        registry.require_passed(challenger, "roll out")
        plan = RolloutPlan.parse(config.rollout_plan, config.rollout_rows_per_step)
        started = rollout.record(registry, challenger, config.rollout_plan, plan.shares[0], rollout.RUNNING)
        decision = RolloutDecision(START, started.share,
                                   f"plan {config.rollout_plan}, {plan.rows_per_step:,} labelled rows a step")
        registry.history.append(HISTORY_EVENTS[START], challenger, by, plan=config.rollout_plan,
                                share=started.share, champion_version=champion)
        return decision
    if not state.running:
        return RolloutDecision(HOLD, state.share if state.state == rollout.PROMOTED else 0,
                               f"the rollout of version {challenger} has {state.state}")
    # The plan the rollout started with rules it to the end.
    plan = RolloutPlan.parse(state.plan, config.rollout_rows_per_step)
    log = run.tables.read(config.predictions_table, missing_hint="score with mlops serve or a job first")
    rows = online_log.labelled_rows_since(log, champion, challenger,
                                          datetime.datetime.fromisoformat(state.step_started_at))
    decision = plan.decide(state.share, rows, comparison)
    if decision.action == PROMOTE:
        decision = _promote(registry, champion, challenger, decision, by)
    if decision.action == HOLD:
        return decision
    rollout.record(registry, challenger, state.plan, decision.share,
                   {STEP_UP: rollout.RUNNING, ROLL_BACK: rollout.ROLLED_BACK,
                    PROMOTE: rollout.PROMOTED}[decision.action])
    registry.history.append(HISTORY_EVENTS[decision.action], challenger, by, from_share=state.share,
                            to_share=decision.share, labelled_rows_at_step=rows, evidence=decision.reason)
    return decision


def _promote(registry: RegistryClient, champion: str, challenger: str, decision: RolloutDecision,
             by: str) -> RolloutDecision:
    """The Champion move at the end of the plan; a hold when the Champion is pinned or moved meanwhile."""
    pin = registry.pinned()
    if pin:
        return RolloutDecision(HOLD, decision.share, f"{decision.reason}; not promoted: the {CHAMPION} is "
                                                     f"pinned by {pin['by']} ({pin['reason']})")
    try:
        registry.move_champion(challenger, champion, by=by, via="online rollout", reason=decision.reason)
    except ChampionMoved as moved:
        return RolloutDecision(HOLD, decision.share, f"not promoted: the {CHAMPION} moved to version "
                                                     f"{moved.found} during the rollout")
    return decision


def _set_endpoint_traffic(client, endpoint: str, registry: RegistryClient, decision: RolloutDecision):
    from mlops.deploy.serving_endpoint import set_traffic

    champion, challenger = registry.alias_version(CHAMPION), registry.alias_version(CHALLENGER)
    promoted = decision.action == PROMOTE
    set_traffic(client, endpoint, champion, challenger or champion,
                0 if promoted else decision.share)
