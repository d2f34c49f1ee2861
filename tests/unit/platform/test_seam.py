"""The platform seam: every URI kind on each platform, the run context, MLOPS_HOME, and the rule
that nothing outside the seam asks which platform it is on."""
import ast
import json
import re
from pathlib import Path

import pytest

from mlops import platform
from mlops.errors import ConfigError
from mlops.platform import context, home

PACKAGE = Path(platform.__file__).resolve().parents[1]


@pytest.fixture
def on_databricks(monkeypatch):
    monkeypatch.setenv(platform.RUNTIME_VERSION_ENV, "18.0")


# URI -> (driver path, Spark path), as "Work with files on Databricks" documents them.
DATABRICKS_CASES = [
    ("dbfs:/mlops/raw", "/dbfs/mlops/raw", "dbfs:/mlops/raw"),
    ("dbfs:/Volumes/prod/taxi/files/raw", "/Volumes/prod/taxi/files/raw",
     "dbfs:/Volumes/prod/taxi/files/raw"),
    ("/dbfs/mlops/raw", "/dbfs/mlops/raw", "dbfs:/mlops/raw"),
    ("/Volumes/prod/taxi/files/raw", "/Volumes/prod/taxi/files/raw", "/Volumes/prod/taxi/files/raw"),
    ("/Workspace/Users/a@b.c/data.csv", "/Workspace/Users/a@b.c/data.csv",
     "file:/Workspace/Users/a@b.c/data.csv"),
    ("file:/tmp/scratch", "/tmp/scratch", "file:/tmp/scratch"),
    ("file:///local_disk0/x%20y", "/local_disk0/x y", "file:/local_disk0/x y"),
    ("/tmp/scratch", "/tmp/scratch", "file:/tmp/scratch"),
    ("/mlops/raw", "/dbfs/mlops/raw", "dbfs:/mlops/raw"),
    ("abfss://raw@acct.dfs.core.windows.net/trips", None,
     "abfss://raw@acct.dfs.core.windows.net/trips"),
]


@pytest.mark.parametrize("uri, driver, spark_path", DATABRICKS_CASES)
def test_uri_kinds_on_databricks(on_databricks, uri, driver, spark_path):
    location = platform.locate(uri)
    assert (str(location.driver) if location.driver else None, location.spark) == (driver, spark_path)


@pytest.mark.parametrize("uri, relative_to_home", [
    ("dbfs:/mlops/raw", "dbfs/mlops/raw"),
    ("/dbfs/mlops/raw", "dbfs/mlops/raw"),
    ("dbfs:/Volumes/prod/taxi/files/raw", "Volumes/prod/taxi/files/raw"),
    ("/Volumes/prod/taxi/files/raw", "Volumes/prod/taxi/files/raw"),
    ("/Workspace/Users/a/data.csv", "Workspace/Users/a/data.csv"),
])
def test_databricks_mounts_are_folders_under_mlops_home_locally(mlops_home, uri, relative_to_home):
    location = platform.locate(uri)
    assert location.driver == (mlops_home / relative_to_home).resolve()
    assert location.spark == str(location.driver)


@pytest.mark.parametrize("uri, expected", [
    ("file:/tmp/scratch", "/tmp/scratch"), ("/tmp/scratch", "/tmp/scratch"), ("relative/x", "relative/x")])
def test_plain_paths_stay_plain_locally(mlops_home, uri, expected):
    assert platform.driver_path(uri).as_posix() == expected == platform.spark_path(uri)


@pytest.mark.parametrize("uri", ["s3://bucket/trips", "gs://bucket/trips", "https://host/trips"])
@pytest.mark.parametrize("databricks", [True, False])
def test_an_unknown_uri_kind_is_refused_naming_the_known_ones(monkeypatch, mlops_home, uri, databricks):
    if databricks:
        monkeypatch.setenv(platform.RUNTIME_VERSION_ENV, "18.0")
    scheme = uri.split(":")[0]
    with pytest.raises(ConfigError, match=f"the URI kind {scheme}: is not supported; use one of dbfs:/, "
                                          "/dbfs/, /Volumes/, /Workspace/, abfss://, file:"):
        platform.locate(uri)


def test_a_relative_path_is_refused_on_databricks(on_databricks):
    with pytest.raises(ConfigError, match="relative path 'raw/trips' is ambiguous on Databricks"):
        platform.spark_path("raw/trips")


def test_cloud_storage_has_no_driver_path(on_databricks):
    with pytest.raises(ConfigError, match="is cloud storage with no driver path"):
        platform.driver_path("abfss://raw@acct.dfs.core.windows.net/trips")


def test_abfss_has_no_local_equivalent(mlops_home):
    with pytest.raises(ConfigError, match="cannot map 'abfss://c@a.dfs.core.windows.net/x' to a local path"):
        platform.driver_path("abfss://c@a.dfs.core.windows.net/x")


def test_the_platform_object_is_chosen_by_the_runtime(monkeypatch, mlops_home):
    assert platform.current().name == "local"
    assert platform.default_tracking_uri() == f"sqlite:///{mlops_home / 'mlflow.db'}"
    monkeypatch.setenv(platform.RUNTIME_VERSION_ENV, "18.0")
    assert platform.current().name == "databricks"
    assert platform.default_tracking_uri() == "databricks"


# ---------------------------------------------------------------- run context

class _Context:
    """The chain ``dbutils.notebook.entry_point.getDbutils().notebook().getContext()`` ends in."""

    def __init__(self, payload):
        self.payload = payload

    def safeToJson(self):
        if isinstance(self.payload, Exception):
            raise self.payload
        return self.payload


class _Dbutils:
    """Shaped like Databricks' dbutils as far as the context lookup goes; nothing else."""

    def __init__(self, payload):
        context_holder = type("Holder", (), {"getContext": lambda _self: _Context(payload)})()
        dbutils = type("Inner", (), {"notebook": lambda _self: context_holder})()
        entry_point = type("EntryPoint", (), {"getDbutils": lambda _self: dbutils})()
        self.notebook = type("Notebook", (), {"entry_point": entry_point})()


def test_a_job_run_is_read_from_the_databricks_context(on_databricks):
    payload = json.dumps({"attributes": {"jobId": "7", "jobName": "taxi_fares_training",
                                         "multitaskParentRunId": "9001", "runId": "9002"}})
    run = platform.run_context(_Dbutils(payload), "train")
    assert (run.job_name, run.job_run_id, run.task) == ("taxi_fares_training", "9001", "train")


def test_an_interactive_databricks_notebook_gets_an_adhoc_run(on_databricks):
    run = platform.run_context(_Dbutils(json.dumps({"attributes": {"notebook_path": "/Users/a/nb"}})), "t")
    assert run.job_name == "notebook" and run.job_run_id.startswith("adhoc-")


def test_an_unreadable_databricks_context_is_an_error_naming_the_call(on_databricks):
    with pytest.raises(ConfigError, match=r"cannot read the Databricks notebook context: .*safeToJson\(\) "
                                          r"failed with RuntimeError"):
        platform.run_context(_Dbutils(RuntimeError("py4j gateway gone")), "train")


def test_a_databricks_context_without_attributes_says_so(on_databricks):
    with pytest.raises(ConfigError, match="has no 'attributes' object"):
        platform.run_context(_Dbutils("{}"), "train")


def test_a_databricks_job_context_without_a_run_id_names_the_missing_fields(on_databricks):
    with pytest.raises(ConfigError, match="context of job 7 names no run: none of multitaskParentRunId, "
                                          "rootRunId, runId is set"):
        platform.run_context(_Dbutils(json.dumps({"attributes": {"jobId": "7"}})), "train")


def test_locally_the_bound_job_run_is_the_context():
    with context.bind(context.RunContext(job_name="j", job_run_id="r-1", task="t", notebook_path="/n.py")):
        run = platform.run_context(None, "score")
    assert (run.job_name, run.job_run_id, run.task, run.notebook_path) == ("j", "r-1", "score", "/n.py")
    assert platform.run_context(None, "score").job_run_id.startswith("adhoc-")


# ---------------------------------------------------------------- MLOPS_HOME

@pytest.mark.parametrize("unusable", ["/sys/mlops-home", "/proc/mlops/home"])
def test_an_unusable_mlops_home_is_one_error_naming_it(monkeypatch, unusable):
    monkeypatch.setenv("MLOPS_HOME", unusable)
    with pytest.raises(ConfigError, match=f"^MLOPS_HOME folder {unusable} is not usable "
                                          r"\(.+\): set MLOPS_HOME to a writable folder"):
        home.runs_dir()


def test_a_home_under_a_file_is_one_error_naming_it(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("MLOPS_HOME", str(blocker / "home"))
    with pytest.raises(ConfigError, match=f"MLOPS_HOME folder {blocker / 'home'} is not usable"):
        home.mlops_home()


# ---------------------------------------------------------------- the seam is the only one

def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), path.read_text(encoding="utf-8")


def test_only_the_seam_reads_the_databricks_runtime_variable():
    readers = [name for name, text in _modules() if "DATABRICKS_RUNTIME_VERSION" in text]
    assert readers == ["platform/__init__.py"]


def test_no_module_outside_the_seam_asks_which_platform_it_is_on():
    askers = [name for name, text in _modules() if not name.startswith("platform/")
              and re.search(r"platform\.name\(\)|on_databricks|platform\.current\(\)\.name", text)]
    assert askers == []


def test_no_core_module_imports_the_local_runtime():
    importers = []
    for name, text in _modules():
        # The command line, the demo and the bundle check run on a workstation or CI agent, never
        # in a task.
        if name.startswith(("local/", "cli/", "deploy/", "demo/")):
            continue
        for node in ast.walk(ast.parse(text)):
            imported = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(module == "mlops.local" or module.startswith("mlops.local.") for module in imported):
                importers.append(name)
    assert importers == []


def test_the_package_root_keeps_at_most_five_modules():
    roots = sorted(path.name for path in PACKAGE.glob("*.py")
                   if path.name not in ("__init__.py", "__main__.py"))
    assert roots == ["errors.py", "orchestration.py"]
    assert (PACKAGE / "config" / "__init__.py").is_file()
