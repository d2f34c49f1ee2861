"""The run a stage function receives: built by :func:`mlops.orchestration.task_run`, typed by its config."""
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from mlops import platform
from mlops.config import JobConfig
from mlops.data.tables import TableStore
from mlops.errors import StageFailed
from mlops.lifecycle import tracking
from mlops.observability.redaction import redacted_exception
from mlops.observability.telemetry import Telemetry
from mlops.platform.context import RunContext


logger = logging.getLogger(__name__)

JobConfigT = TypeVar("JobConfigT", bound=JobConfig)


@dataclass
class TaskRun(Generic[JobConfigT]):
    """What a stage function may use: Spark, its job's config, tables, MLflow run and a temp folder.

    Stages say which job's config they read: ``run: TaskRun[TrainingConfig]``.
    """

    task: str
    config: JobConfigT
    spark: object
    dbutils: object
    tables: TableStore
    telemetry: Telemetry
    temp_dir: Path
    job: RunContext
    host: platform.Platform = field(default_factory=platform.current)
    mlflow_run_id: str | None = None
    stage_durations: dict = field(default_factory=dict)

    def stage(self, name, function, *args, **kwargs):
        """Run one stage inside a telemetry span; wrap its failure once, naming the stage.

        The failure is raised from a redacted copy of the error's chain, outside the
        ``except`` block, so the raw chain (which may hold a secret) is not attached.
        """
        logger.info("stage %s started", name)
        started = time.monotonic()
        self.telemetry.set_dimensions(stage=name)
        failure = None
        try:
            with self.telemetry.span(name), tracking.tracking_server():
                result = function(self, *args, **kwargs)
        except StageFailed:
            raise
        except Exception as error:
            failure = StageFailed(name, redacted_exception(error))
        finally:
            self.stage_durations[name] = round(time.monotonic() - started, 3)
            self.telemetry.set_dimensions(stage=None)
        if failure is not None:
            raise failure from failure.cause
        logger.info("stage %s finished in %.1fs", name, self.stage_durations[name])
        return result

    def set_task_value(self, key, value):
        self.dbutils.jobs.taskValues.set(key=key, value=value)

    def annotate(self, **dimensions):
        """Add dimensions (model name, version...) to every later telemetry item."""
        self.telemetry.set_dimensions(**dimensions)
