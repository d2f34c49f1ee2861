"""Typed job configuration: one pydantic model per job (:mod:`.jobs`), and the messages its errors read as."""
from mlops.config.jobs import (JobConfig, MonitoringConfig, RawTripsConfig, ScoringConfig,  # noqa: F401
                               TrainingConfig, parse_assignments)
from mlops.config.streaming import StreamingConfig  # noqa: F401
