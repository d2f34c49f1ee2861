"""Task ``compare_online``: the Challenger against the Champion on the inference log's labelled rows.

It reads the monitored range of the log, sums each arm's errors (shadow pairs when there are
some), and says promote, keep, or not enough data yet. The verdict goes out as task values
(``online_verdict``, ``online_comparison``: the line with the evidence, ``champion_version``,
``challenger_version``, ``online_rows_needed``), as MLflow metrics and a figure in the task's run
(``online_comparison/arms.png``), and as telemetry: ``online_comparison.<metric>`` metrics and one
``online_comparison.verdict`` event. Without a Challenger there is nothing to compare: the
verdict is ``no challenger`` and the task succeeds.
"""
import logging
import math
from dataclasses import dataclass

import mlflow

from mlops.config import MonitoringConfig
from mlops.lifecycle.registry import CHALLENGER, CHAMPION, RegistryClient
from mlops.monitoring import online_log
from mlops.monitoring.online_comparison import Comparison, ComparisonSettings
from mlops.observability import plots
from mlops.stages.run import TaskRun

logger = logging.getLogger(__name__)

NO_CHALLENGER = "no challenger"
METRIC_PREFIX = "online_comparison."
VERDICT_EVENT = "online_comparison.verdict"
FIGURE = "online_comparison/arms.png"
MEASURES = ("champion_rows", "challenger_rows", "champion_rmse", "challenger_rmse", "champion_mae",
            "challenger_mae", "rmse_ratio", "ratio_low", "ratio_high", "rows_needed")


@dataclass(frozen=True)
class JudgedArms:
    """The Challenger judged against the Champion: the versions, the settings and the comparison."""

    champion: str
    challenger: str
    settings: ComparisonSettings
    result: Comparison

    @property
    def line(self) -> str:
        return f"challenger version {self.challenger} against champion version {self.champion}: " \
               f"{self.result.line()}"

    def figure(self):
        return arms_figure(self.result, self.settings, self.champion, self.challenger)


def serving_versions(config: MonitoringConfig) -> dict:
    """The Champion's and the Challenger's versions, by alias; an alias not set is absent."""
    registry = RegistryClient.from_config(config)
    if not registry.exists():
        return {}
    versions = {alias: registry.alias_version(alias) for alias in (CHAMPION, CHALLENGER)}
    return {alias: str(version) for alias, version in versions.items() if version}


def judge_arms(config: MonitoringConfig, tables, versions: dict) -> JudgedArms | None:
    """The comparison of the aliases' arms over the monitored range; None unless both are set."""
    if CHAMPION not in versions or CHALLENGER not in versions:
        return None
    start, end = config.monitoring_range()
    log = tables.read(config.predictions_table, missing_hint="score with mlops serve or a job first")
    settings = ComparisonSettings(margin=config.online_comparison_margin,
                                  alpha=config.online_comparison_alpha)
    result = online_log.compare_log(log, versions[CHAMPION], versions[CHALLENGER], start, end, settings)
    return JudgedArms(versions[CHAMPION], versions[CHALLENGER], settings, result)


def compare_online_arms(run: TaskRun[MonitoringConfig]) -> Comparison | None:
    """Judge the Challenger on the monitored range and hand the verdict on; None without a Challenger."""
    config = run.config
    versions = serving_versions(config)
    judged = judge_arms(config, run.tables, versions)
    if judged is None:
        absent = " and no ".join(alias for alias in (CHAMPION, CHALLENGER) if alias not in versions)
        line = f"model {config.registered_model_name} has no {absent}: there is nothing to compare online"
        run.set_task_value("online_verdict", NO_CHALLENGER)
        run.set_task_value("online_comparison", line)
        logger.info(line)
        return None
    result, champion, challenger = judged.result, judged.champion, judged.challenger
    values = {"online_verdict": result.verdict, "online_comparison": judged.line,
              "champion_version": champion, "challenger_version": challenger,
              "online_rows_needed": result.rows_needed}
    for key, value in values.items():
        run.set_task_value(key, value)
    measured = {name: float(getattr(result, name)) for name in MEASURES}
    mlflow.log_metrics({f"online.{name}": value for name, value in measured.items() if math.isfinite(value)})
    mlflow.set_tags({"online_comparison.verdict": result.verdict,
                     "online_comparison.paired": str(result.paired)})
    dimensions = {"model_name": config.registered_model_name, "champion_version": champion,
                  "challenger_version": challenger, "verdict": result.verdict}
    for name, value in measured.items():
        if math.isfinite(value):
            run.telemetry.track_metric(METRIC_PREFIX + name, value, **dimensions)
    run.telemetry.track_event(VERDICT_EVENT, **dimensions, comparison=judged.line)
    figure = judged.figure()
    try:
        mlflow.log_figure(figure, FIGURE)
    finally:
        plots.close(figure)
    start, end = config.monitoring_range()
    logger.info("online comparison %s to %s: %s", start, end, judged.line)
    return result


def arms_figure(result: Comparison, settings: ComparisonSettings, champion: str, challenger: str):
    """Each arm's rmse and mae, and the rmse ratio's interval against 1 and the tolerated margin."""
    figure, (errors, ratio) = plots.plt.subplots(1, 2, figsize=(10, 3.6))
    names = [f"champion v{champion}\n{result.champion_rows:,} rows",
             f"challenger v{challenger}\n{result.challenger_rows:,} rows"]
    for offset, (label, values) in enumerate((("rmse", (result.champion_rmse, result.challenger_rmse)),
                                              ("mae", (result.champion_mae, result.challenger_mae)))):
        errors.bar([index + 0.4 * offset for index in range(2)], values, width=0.4, label=label)
    errors.set_xticks([0.2, 1.2], names, fontsize=8)
    errors.set_ylabel("error (fare units)")
    errors.legend(fontsize=8)
    errors.set_title("Labelled rows of each arm" + (" (shadow pairs)" if result.paired else ""), fontsize=9)
    if math.isfinite(result.rmse_ratio):
        ratio.errorbar([result.rmse_ratio], [0], xerr=[[result.rmse_ratio - result.ratio_low],
                                                       [result.ratio_high - result.rmse_ratio]],
                       fmt="o", capsize=6, color="#2b6cb0", label="challenger / champion rmse")
    ratio.axvline(1.0, color="#718096", linestyle="--", label="equal")
    ratio.axvline(1.0 + settings.margin, color="#c53030", linestyle="--",
                  label=f"tolerated (1 + margin {settings.margin:g})")
    ratio.set_yticks([])
    ratio.legend(fontsize=8, loc="upper left")
    ratio.set_title(f"Verdict: {result.verdict}", fontsize=9)
    figure.tight_layout()
    return figure
