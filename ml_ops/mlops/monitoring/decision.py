"""Whether the monitored windows call for retraining, and why.

A window is over threshold when any column drifted or model quality degraded in it, for a
model version that serves (the version the ``Champion`` alias names): a version scored by hand
(``trained_model_version``) is reported, but retraining is not started for it. Windows without
enough rows are left out of the count: they are reported as insufficient data, never as
violations. Retraining is required when at least
``retrain_min_violations`` of the last ``retrain_windows`` windows with data are over
threshold, the latest of them included, and no cooldown applies. Rows a Challenger answered or
shadowed (arms ``challenger`` and ``shadow``) are reported, and left to the online comparison.
"""
import datetime
from dataclasses import dataclass, field

from mlops.inference.engine import CHALLENGER_ARM, SHADOW_ARM
from mlops.monitoring.rows import DriftRow, ProfileRow, Status
from mlops.monitoring.settings import MonitoringSettings

COMPARED_ARMS = (CHALLENGER_ARM, SHADOW_ARM)
ESTIMATED_RATIO = "estimated_rmse_ratio_low"


@dataclass(frozen=True)
class Decision:
    retrain_required: bool
    reason: str
    windows: list = field(default_factory=list)
    violations: list = field(default_factory=list)

    def task_values(self) -> dict:
        return {"retrain_required": "true" if self.retrain_required else "false", "reason": self.reason,
                "violated_windows": [window for window, state in self.windows if state == Status.VIOLATION],
                "violations": [violation.line() for violation in self.violations[:50]]}


@dataclass(frozen=True)
class Violation:
    """One drifted column or degraded quality in one window: its value and the limit it crossed."""

    window_start: str
    model_version: str
    column_name: str
    metric: str
    value: float
    limit: float

    def line(self) -> str:
        where = f"{self.window_start} version {self.model_version} {self.column_name}"
        return f"{where}: {self.metric} {self.value:.4g} > {self.limit:.4g}"


def violations_of(profile_rows: list[ProfileRow], drift_rows: list[DriftRow],
                  settings: MonitoringSettings, quality_metric: str = "rmse_ratio") -> list:
    """Every drifted column and degraded quality, as :class:`Violation`.

    The limit is the larger of the configured threshold and what chance gives at the window's size;
    an estimated quality (``estimated_rmse_ratio_low``) has chance in its bound already.
    """
    def quality_limit(row):
        if quality_metric == ESTIMATED_RATIO:
            return settings.rmse_ratio_threshold
        return max(settings.rmse_ratio_threshold, row.rmse_ratio_by_chance)
    found = [(row, "population_stability_index", max(settings.psi_threshold, row.psi_by_chance))
             for row in drift_rows if row.status == Status.VIOLATION]
    found += [(row, quality_metric, quality_limit(row)) for row in profile_rows
              if row.is_table and row.quality_status == Status.VIOLATION]
    return [Violation(row.window_start_text, row.model_version, row.column_name, metric, getattr(row, metric),
                      limit)
            for row, metric, limit in found]


def window_states(profile_rows: list[ProfileRow], drift_rows: list[DriftRow]) -> list[tuple[str, str]]:
    """(window start, ok | violation | insufficient_data) for each window, in time order."""
    statuses: dict[str, set] = {}
    for row in drift_rows + [row for row in profile_rows if row.is_table]:
        statuses.setdefault(row.window_start_text, set()).add(row.verdict)
    # An exempt column has data but is not judged: it counts as within thresholds.
    states = {start: next(state for state in (Status.VIOLATION, Status.OK, Status.INSUFFICIENT)
                          if state in found or (state == Status.OK and Status.EXEMPT in found))
              for start, found in statuses.items()}
    return sorted(states.items())


def decide(profile_rows: list[ProfileRow], drift_rows: list[DriftRow], settings: MonitoringSettings,
           last_trained_at: datetime.datetime | None, now: datetime.datetime,
           training_in_progress: str = "", serving_versions=None,
           quality_metric: str = "rmse_ratio") -> Decision:
    """Apply the retraining rule, then the cooldown; ``training_in_progress`` names a running training.

    With ``serving_versions``, only their rows count towards the rule; the others' violations are
    still listed. ``quality_metric`` names what the rows' ``quality_status`` judged.
    """
    violations = violations_of(profile_rows, drift_rows, settings, quality_metric)
    if not profile_rows and not drift_rows:
        return Decision(False, "no rows: the inference log has no rows in the monitored range", [], [])
    others = ""
    # A Challenger's traffic, split or shadowed, is judged by the online comparison, not by this rule.
    compared = {row.arm for row in profile_rows + drift_rows if row.arm in COMPARED_ARMS}
    if compared:
        profile_rows = [row for row in profile_rows if row.arm not in COMPARED_ARMS]
        drift_rows = [row for row in drift_rows if row.arm not in COMPARED_ARMS]
        others = f"; the {' and '.join(sorted(compared))} arm(s) are compared online, not judged here"
    if serving_versions:
        scored = {row.model_version for row in profile_rows + drift_rows}
        ignored = sorted(scored - set(serving_versions), key=lambda version: (len(version), version))
        profile_rows = [row for row in profile_rows if row.model_version in serving_versions]
        drift_rows = [row for row in drift_rows if row.model_version in serving_versions]
        if ignored:
            others += (f"; version(s) {', '.join(ignored)} do not serve: reported, not judged")
    windows = window_states(profile_rows, drift_rows)
    judged = [(start, state) for start, state in windows
              if state != Status.INSUFFICIENT][-settings.retrain_windows:]
    if not judged:
        reason = "insufficient data: no monitored window has enough rows" if windows else \
            "no rows of a serving version in the monitored range"
        return Decision(False, reason + others, windows, violations)
    over = sum(state == Status.VIOLATION for _, state in judged)
    rule = (f"{over} of the last {len(judged)} windows with data over threshold "
            f"(rule: {settings.retrain_min_violations} of {settings.retrain_windows}, the latest included)"
            + others)
    if judged[-1][1] != Status.VIOLATION:
        return Decision(False, f"the latest window {judged[-1][0]} is within thresholds; {rule}", windows,
                        violations)
    if over < settings.retrain_min_violations:
        return Decision(False, f"not enough windows over threshold: {rule}", windows, violations)
    if training_in_progress:
        return Decision(False, f"cooldown: a training run is in progress ({training_in_progress}); {rule}",
                        windows, violations)
    cooldown = datetime.timedelta(days=settings.cooldown_days)
    if last_trained_at is not None and now - last_trained_at < cooldown:
        return Decision(False, f"cooldown: a version was trained at {last_trained_at.isoformat()}, within "
                               f"{settings.cooldown_days} days; {rule}", windows, violations)
    return Decision(True, f"retrain: {rule}", windows, violations)
