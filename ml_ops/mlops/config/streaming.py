"""The streaming scoring job's parameters."""
from typing import ClassVar, Literal

from pydantic import Field

from mlops.config.jobs import JobConfig


class StreamingConfig(JobConfig):
    """Parameters of the streaming scoring job: where trips arrive, how often to score them, where to."""

    # A folder of Parquet files, a folder with a Delta log, or a table catalog.schema.table.
    taxi_fares_stream_source: str = "dbfs:/mlops/taxi_fares/landing/trips"
    stream_trigger: Literal["available_now", "processing_time"] = "available_now"
    trigger_interval_seconds: float = Field(5.0, gt=0)
    # processing_time only: stop after this long; 0 runs until the job is cancelled.
    stream_run_minutes: float = Field(0.0, ge=0)
    max_files_per_trigger: int = Field(0, ge=0)
    # A trip picked up before the newest pickup seen minus this many minutes is late.
    watermark_minutes: int = Field(60, ge=0)
    checkpoint_location: str = "dbfs:/mlops/taxi_fares/checkpoints"
    model_alias: str = "Champion"
    predictions_table: str = "taxi_fares_predictions"
    online_store_path: str = "dbfs:/mlops/taxi_fares/online_store"

    NOT_IN_JOB_FILE: ClassVar[dict] = JobConfig.NOT_IN_JOB_FILE

    def checkpoint(self) -> str:
        """One checkpoint per target table: the log's name under the checkpoint location."""
        return f"{self.checkpoint_location.rstrip('/')}/{self.predictions_table}"
