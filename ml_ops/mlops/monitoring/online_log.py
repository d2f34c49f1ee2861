"""The arms of an online comparison, summed from the inference log's labelled rows in one Spark pass."""
import datetime

from pyspark.sql import functions as F

from mlops.errors import DataError
from mlops.inference import engine
from mlops.inference.engine import CHALLENGER_ARM as CHALLENGER
from mlops.inference.engine import CHAMPION_ARM as CHAMPION
from mlops.inference.engine import SHADOW_ARM as SHADOW
from mlops.monitoring.online_comparison import (ArmErrors, Comparison, ComparisonSettings, PairedErrors,
                                                compare)


def _sums(error):
    squared = error * error
    return [F.count(error), F.sum(squared), F.sum(squared * squared), F.sum(F.abs(error))]


def _arm(row, prefix: str = "") -> ArmErrors:
    count = row[f"{prefix}rows"] or 0
    return ArmErrors(int(count), float(row[f"{prefix}squared"] or 0.0), float(row[f"{prefix}fourth"] or 0.0),
                     float(row[f"{prefix}absolute"] or 0.0))


def _named(columns, prefix: str = ""):
    return [column.alias(f"{prefix}{name}") for column, name in zip(
        columns, ("rows", "squared", "fourth", "absolute"))]


def arm_errors(log, champion_version: str, challenger_version: str, start: datetime.date,
               end: datetime.date) -> tuple[ArmErrors, ArmErrors, PairedErrors | None]:
    """The champion's and the challenger's split rows, and their shadow pairs, from ``start`` to ``end``."""
    missing = [name for name in (engine.ARM, engine.LABEL, engine.PREDICTION) if name not in log.columns]
    if missing:
        raise DataError(f"the inference log has no column {', '.join(missing)}: it was written before "
                        "online comparison; score once with this version to add it")
    labelled = log.where(F.col(engine.PICKUP_DATE).between(F.lit(start), F.lit(end))
                         & F.col(engine.LABEL).isNotNull() & F.col(engine.PREDICTION).isNotNull())
    error = F.col(engine.PREDICTION) - F.col(engine.LABEL)
    arm, version = F.col(engine.ARM), F.col(engine.MODEL_VERSION)
    split = (labelled.where(((arm == CHAMPION) & (version == champion_version))
                            | ((arm == CHALLENGER) & (version == challenger_version)))
             .groupBy(engine.ARM).agg(*_named(_sums(error))).collect())
    by_arm = {row[engine.ARM]: _arm(row) for row in split}
    empty = ArmErrors(0, 0.0, 0.0, 0.0)
    champion_rows = labelled.where(F.col(engine.MODEL_VERSION) == champion_version).select(
        engine.REQUEST_ID, error.alias("champion_error"))
    shadow_rows = labelled.where((F.col(engine.ARM) == SHADOW)
                                 & (F.col(engine.MODEL_VERSION) == challenger_version)).select(
        engine.REQUEST_ID, error.alias("shadow_error"))
    champion_error, shadow_error = F.col("champion_error"), F.col("shadow_error")
    pairs = champion_rows.join(shadow_rows, engine.REQUEST_ID).agg(
        *_named(_sums(champion_error), "a_"), *_named(_sums(shadow_error), "b_"),
        F.sum(champion_error * champion_error * shadow_error * shadow_error).alias("cross")).first()
    paired = PairedErrors(_arm(pairs, "a_"), _arm(pairs, "b_"), float(pairs["cross"] or 0.0)) \
        if pairs["a_rows"] else None
    return by_arm.get(CHAMPION, empty), by_arm.get(CHALLENGER, empty), paired


def compare_log(log, champion_version: str, challenger_version: str, start: datetime.date,
                end: datetime.date, settings: ComparisonSettings = ComparisonSettings()) -> Comparison:
    """The verdict on the log's window: on shadow pairs when there are enough, else on the split rows."""
    champion, challenger, paired = arm_errors(log, champion_version, challenger_version, start, end)
    if paired is not None and paired.champion.rows >= settings.min_rows_per_arm:
        return compare(paired.champion, paired.challenger, settings, paired=paired)
    return compare(champion, challenger, settings)


def labelled_rows_since(log, champion_version: str, challenger_version: str,
                        since: datetime.datetime) -> int:
    """Labelled rows of both arms (Champion, Challenger or its shadow) scored from ``since`` on."""
    arm, version = F.col(engine.ARM), F.col(engine.MODEL_VERSION)
    of_an_arm = ((arm == CHAMPION) & (version == champion_version)) \
        | (arm.isin(CHALLENGER, SHADOW) & (version == challenger_version))
    return log.where(of_an_arm & F.col(engine.LABEL).isNotNull()
                     & (F.col(engine.SCORED_AT) >= F.lit(since))).count()
