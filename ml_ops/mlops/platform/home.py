"""``MLOPS_HOME`` (default ``./.mlops``): where the local platform keeps what Databricks would.

Layout::

    $MLOPS_HOME/dbfs/         what dbfs:/ and /dbfs/ paths map to
    $MLOPS_HOME/Volumes/      what /Volumes/ paths map to
    $MLOPS_HOME/Workspace/    what /Workspace/ paths map to
    $MLOPS_HOME/runs/         one JSON record and one output folder per notebook or job run
    $MLOPS_HOME/tables/       local tables
    $MLOPS_HOME/mlflow.db     MLflow tracking store (unless MLFLOW_TRACKING_URI is set)
    $MLOPS_HOME/mlartifacts/  MLflow artifacts

Folders are created on first use. A folder that cannot be created or written is a
:class:`~mlops.errors.ConfigError` naming ``MLOPS_HOME``.
"""
import datetime
import os
import secrets
from pathlib import Path

from mlops.errors import ConfigError

HOME_ENV = "MLOPS_HOME"
DEFAULT_HOME = ".mlops"


def mlops_home() -> Path:
    """The absolute MLOPS_HOME folder, created if missing."""
    home = Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().absolute()
    return _usable_folder(home, home)


def home_problem(error: OSError, home: Path) -> ConfigError:
    """The one-line error for an OSError on a path under MLOPS_HOME."""
    reason = error.strerror or type(error).__name__
    return ConfigError(f"{HOME_ENV} folder {home} is not usable ({reason}): set {HOME_ENV} "
                       "to a writable folder, or fix its permissions")


def _usable_folder(path: Path, home: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise home_problem(error, home) from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{HOME_ENV} folder {home} is not usable (not writable): set {HOME_ENV} "
                          "to a writable folder, or fix its permissions")
    return path


def _subdir(name: str) -> Path:
    home = mlops_home()
    return _usable_folder(home / name, home)


def dbfs_root() -> Path:
    """The local folder that stands for the root of DBFS."""
    return _subdir("dbfs")


def mount_root(name: str) -> Path:
    """The local folder that stands for a Databricks mount such as /Volumes or /Workspace."""
    return _subdir(name)


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


def utc_now(timespec: str = "seconds") -> str:
    """The current UTC time in ISO 8601, to ``timespec`` precision."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec=timespec)


def new_run_id() -> str:
    """A unique run id that sorts by start time, e.g. ``20250102-030405123-9f2c1a``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}{now.microsecond // 1000:03d}-{secrets.token_hex(3)}"
