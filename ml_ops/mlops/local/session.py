"""The Spark session and the state one local run shares across its notebooks.

The run context a notebook runs in is bound through the platform seam
(:func:`mlops.platform.context.bind`), so stage code reads it without importing this package.
"""
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

from mlops.local import delta_jars
from mlops.local.dbutils import register_local_secrets
from mlops.platform.context import RunContext
from mlops.platform.home import new_run_id, runs_dir

logger = logging.getLogger(__name__)

MASTER_ENV = "MLOPS_SPARK_MASTER"
REMOTE_ENV = "SPARK_REMOTE"
SHUFFLE_PARTITIONS_ENV = "MLOPS_SHUFFLE_PARTITIONS"
DRIVER_MEMORY_ENV = "MLOPS_DRIVER_MEMORY"


def spark_session():
    """Get or create the local SparkSession, or a Spark Connect session when SPARK_REMOTE is set.

    Local master: MLOPS_SPARK_MASTER (default ``local[*]``). Shuffle partitions:
    MLOPS_SHUFFLE_PARTITIONS (default 8). Driver memory: MLOPS_DRIVER_MEMORY (default 4g).
    A local session loads Delta Lake (:mod:`mlops.local.delta_jars`); a Connect server has its own.
    """
    from pyspark.sql import SparkSession

    # Executors must import this interpreter's packages, not the system Python's; a laptop's Spark
    # listens on loopback unless told otherwise, so `mlops` works outside `make` too.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    runtime_conf = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": os.environ.get(SHUFFLE_PARTITIONS_ENV, "8"),
    }
    remote = os.environ.get(REMOTE_ENV)
    if remote:
        # Static confs (UI, driver memory) belong to the Connect server, not to this client.
        builder = SparkSession.builder.remote(remote)
    else:
        builder = (
            SparkSession.builder.master(os.environ.get(MASTER_ENV, "local[*]"))
            .appName("mlops-local")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.memory", os.environ.get(DRIVER_MEMORY_ENV, "4g"))
        )
        for key, value in delta_jars.spark_conf().items():
            builder = builder.config(key, value)
    for key, value in runtime_conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    if not remote:
        _quiet_table_id_warnings(session)
    logger.info("Spark session ready (%s)", remote or os.environ.get(MASTER_ENV, "local[*]"))
    return session


def _quiet_table_id_warnings(session):
    """A replaced table (CREATE OR REPLACE) gets a new table id, which Delta reports as a WARN with
    both snapshots dumped whole, once per table and process; errors still show."""
    jvm = session.sparkContext._jvm
    level = jvm.org.apache.logging.log4j.Level.ERROR
    for name in ("org.apache.spark.sql.delta.DeltaLog", "org.apache.spark.sql.delta.OptimisticTransaction"):
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, level)


class LocalSession:
    """What one local run shares across its notebooks: Spark, the job context and task values.

    ``spark`` may be an existing SparkSession (tests pass theirs); otherwise the active one is
    used, or one is created on first use and stopped by ``close()``.
    """

    def __init__(self, spark=None, job_name: Optional[str] = None, job_run_id: Optional[str] = None,
                 output_dir: Optional[Path] = None):
        self._spark = spark
        self._owns_spark = spark is None
        self.job_name = job_name
        self.job_run_id = job_run_id
        self.task_key: Optional[str] = None
        # task key -> {value key -> JSON-compatible value}; None is the key outside a job.
        self.task_values: dict[Optional[str], dict[str, Any]] = {}
        self.output_dir = output_dir
        register_local_secrets()

    @property
    def spark(self):
        if self._spark is None:
            from pyspark.sql import SparkSession

            # A session someone else started (a test fixture, a notebook host) is theirs to stop.
            active = SparkSession.getActiveSession()
            self._owns_spark = active is None
            self._spark = active if active is not None else spark_session()
        return self._spark

    def start(self) -> None:
        """Create (or attach to) the Spark session now rather than on first use."""
        self.spark

    @property
    def in_job(self) -> bool:
        return self.task_key is not None

    def context_for(self, notebook_path: Path) -> RunContext:
        """The run context of a notebook run in this session."""
        return RunContext(job_name=self.job_name, job_run_id=self.job_run_id,
                          task=self.task_key, notebook_path=str(notebook_path))

    def run_output_dir(self) -> Path:
        """Folder for display output and error details, created on first use."""
        if self.output_dir is None:
            self.output_dir = runs_dir() / new_run_id()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        return self.output_dir

    def close(self) -> None:
        """Stop the Spark session if this object created it."""
        if self._owns_spark and self._spark is not None:
            self._spark.stop()
            self._spark = None

    def __enter__(self) -> "LocalSession":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
