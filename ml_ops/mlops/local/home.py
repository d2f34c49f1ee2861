"""Where the local runtime keeps its state: ``MLOPS_HOME`` (default ``./.mlops``).

Layout::

    $MLOPS_HOME/dbfs/         what dbfs:/ and /dbfs/ paths map to
    $MLOPS_HOME/runs/         one JSON record and one output folder per notebook or job run
    $MLOPS_HOME/tables/       local tables
    $MLOPS_HOME/mlflow.db     MLflow tracking store (unless MLFLOW_TRACKING_URI is set)
    $MLOPS_HOME/mlartifacts/  MLflow artifacts

Directories are created on first use, so reading a path never leaves empty folders behind.
"""
import datetime
import os
import secrets
from pathlib import Path

HOME_ENV = "MLOPS_HOME"
DEFAULT_HOME = ".mlops"


def mlops_home() -> Path:
    """The absolute MLOPS_HOME directory, created if missing."""
    home = Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().absolute()
    home.mkdir(parents=True, exist_ok=True)
    return home


def _subdir(name: str) -> Path:
    path = mlops_home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def dbfs_root() -> Path:
    """The local directory that stands for the root of DBFS."""
    return _subdir("dbfs")


def runs_dir() -> Path:
    """Run records (``<run_id>.json``) and run output folders (``<run_id>/``)."""
    return _subdir("runs")


def tables_dir() -> Path:
    """Root of the local table store."""
    return _subdir("tables")


def mlflow_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else a sqlite store inside MLOPS_HOME."""
    configured = os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    return f"sqlite:///{mlops_home() / 'mlflow.db'}"


def mlflow_artifact_root() -> Path:
    """Default artifact root for experiments created against the local store."""
    return _subdir("mlartifacts")


def new_run_id() -> str:
    """A unique run id that sorts by start time, e.g. ``20250102-030405123-9f2c1a``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}{now.microsecond // 1000:03d}-{secrets.token_hex(3)}"
