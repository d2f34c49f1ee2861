"""The local dbutils: widgets, secrets, fs and task values, without Spark."""
import os

import pytest

from mlops.errors import ConfigError
from mlops.local.dbutils import LocalDbutils, secret_env_name
from mlops.platform import driver_path as to_local_path
from mlops.local.session import LocalSession


@pytest.fixture
def dbutils(mlops_home):
    return LocalDbutils(LocalSession(), {"alpha": "from parameter", "undeclared": "passed"})


# ---------------------------------------------------------------- widgets

def test_parameter_overrides_default_and_default_applies_otherwise(dbutils):
    dbutils.widgets.text("alpha", "default a")
    dbutils.widgets.text("beta", "default b", "Beta label")
    assert dbutils.widgets.get("alpha") == "from parameter"
    assert dbutils.widgets.get("beta") == "default b"


def test_get_all_lists_declared_widgets_and_passed_parameters(dbutils):
    dbutils.widgets.combobox("beta", "b", ["a", "b"])
    dbutils.widgets.multiselect("gamma", "x,y", ["x", "y", "z"])
    assert dbutils.widgets.getAll() == {"alpha": "from parameter", "undeclared": "passed",
                                        "beta": "b", "gamma": "x,y"}


def test_get_of_an_unknown_widget_fails_like_databricks(dbutils):
    with pytest.raises(ConfigError, match="No input widget named missing is defined"):
        dbutils.widgets.get("missing")


def test_get_argument_falls_back_to_its_default(dbutils):
    assert dbutils.widgets.getArgument("missing", "fallback") == "fallback"
    assert dbutils.widgets.getArgument("undeclared") == "passed"


def test_remove_and_remove_all(dbutils):
    dbutils.widgets.text("beta", "b")
    dbutils.widgets.text("gamma", "g")
    dbutils.widgets.remove("beta")
    with pytest.raises(ConfigError, match="No input widget named beta is defined"):
        dbutils.widgets.get("beta")
    with pytest.raises(ConfigError, match="No input widget named beta is defined"):
        dbutils.widgets.remove("beta")
    dbutils.widgets.removeAll()
    assert dbutils.widgets.getAll() == {"alpha": "from parameter", "undeclared": "passed"}


def test_dropdown_default_must_be_a_choice(dbutils):
    with pytest.raises(ConfigError, match=r"dropdown widget 'mode': default value 'fast' is not one of "
                                          r"its choices \['slow', 'steady'\]"):
        dbutils.widgets.dropdown("mode", "fast", ["slow", "steady"])


def test_multiselect_parameter_must_be_choices():
    widgets = LocalDbutils(LocalSession(), {"colors": "red,blue"}).widgets
    with pytest.raises(ConfigError, match=r"value\(s\) \['blue'\] for multiselect widget 'colors' are not "
                                          r"among its choices \['red', 'green'\]"):
        widgets.multiselect("colors", "red", ["red", "green"])


def test_widget_default_must_be_a_string(dbutils):
    with pytest.raises(ConfigError, match="widget 'count': defaultValue must be a string, got int 3"):
        dbutils.widgets.text("count", 3)


# ---------------------------------------------------------------- secrets

def test_secret_name_rule():
    assert secret_env_name("kv-prod", "app.insights") == "MLOPS_SECRET_KV_PROD_APP_INSIGHTS"


def test_secret_is_read_from_its_environment_variable(dbutils, monkeypatch):
    monkeypatch.setenv("MLOPS_SECRET_KV_TEST_API_KEY", "s3cr3t-value")
    assert dbutils.secrets.get("kv-test", "api-key") == "s3cr3t-value"
    assert dbutils.secrets.getBytes("kv-test", "api-key") == b"s3cr3t-value"


def test_missing_secret_names_the_variable_and_no_value(dbutils, monkeypatch):
    monkeypatch.setenv("MLOPS_SECRET_KV_TEST_OTHER", "must-not-leak")
    with pytest.raises(ConfigError) as caught:
        dbutils.secrets.get("kv-test", "storage.key")
    message = str(caught.value)
    assert "set the environment variable MLOPS_SECRET_KV_TEST_STORAGE_KEY" in message
    assert "scope: kv-test and key: storage.key" in message
    assert "must-not-leak" not in message


def test_secret_listing(dbutils, monkeypatch):
    for name in [name for name in os.environ if name.startswith("MLOPS_SECRET_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLOPS_SECRET_KV_ALPHA", "1")
    monkeypatch.setenv("MLOPS_SECRET_KV_BETA_KEY", "2")
    monkeypatch.setenv("MLOPS_SECRET_OTHER_X", "3")
    assert [item.key for item in dbutils.secrets.list("kv")] == ["alpha", "beta_key"]
    assert [scope.name for scope in dbutils.secrets.listScopes()] == ["kv", "other"]
    monkeypatch.setenv("MLOPS_SECRET_SCOPES", "kv-prod, other")
    assert [scope.name for scope in dbutils.secrets.listScopes()] == ["kv-prod", "other"]


# ---------------------------------------------------------------- fs

def test_dbfs_uris_and_fuse_paths_map_to_mlops_home(mlops_home):
    assert to_local_path("dbfs:/data/raw.csv") == (mlops_home / "dbfs/data/raw.csv").resolve()
    assert to_local_path("/dbfs/data/raw.csv") == (mlops_home / "dbfs/data/raw.csv").resolve()
    assert to_local_path("file:///tmp/x.csv").as_posix() == "/tmp/x.csv"
    assert to_local_path("relative/file.csv").as_posix() == "relative/file.csv"


def test_paths_cannot_escape_dbfs(mlops_home):
    with pytest.raises(ConfigError, match=r"'dbfs:/../outside' points outside DBFS"):
        to_local_path("dbfs:/../outside")


def test_cloud_uris_have_no_local_path(mlops_home):
    with pytest.raises(ConfigError, match=r"cannot map 'abfss://c@a.dfs.core.windows.net/x' to a local "
                                          r"path: .* not abfss:"):
        to_local_path("abfss://c@a.dfs.core.windows.net/x")


def test_fs_put_head_ls_cp_mv_rm(dbutils, mlops_home):
    fs = dbutils.fs
    assert fs.put("dbfs:/landing/a.txt", "first line\nsecond")
    assert (mlops_home / "dbfs/landing/a.txt").read_text() == "first line\nsecond"
    assert fs.head("/dbfs/landing/a.txt", 5) == "first"
    with pytest.raises(FileExistsError, match="File dbfs:/landing/a.txt already exists; pass overwrite=True"):
        fs.put("dbfs:/landing/a.txt", "again")
    fs.put("dbfs:/landing/a.txt", "replaced", overwrite=True)
    fs.mkdirs("dbfs:/landing/sub")
    listing = fs.ls("dbfs:/landing")
    assert [(info.path, info.name, info.size) for info in listing] == [
        ("dbfs:/landing/a.txt", "a.txt", 8), ("dbfs:/landing/sub/", "sub/", 0)]
    fs.cp("dbfs:/landing/a.txt", "dbfs:/landing/sub/b.txt")
    with pytest.raises(IsADirectoryError, match="dbfs:/landing is a directory; pass recurse=True to copy it"):
        fs.cp("dbfs:/landing", "dbfs:/copy")
    fs.cp("dbfs:/landing", "dbfs:/copy", recurse=True)
    assert fs.head("dbfs:/copy/sub/b.txt") == "replaced"
    fs.mv("dbfs:/copy/a.txt", "dbfs:/moved.txt")
    assert not (mlops_home / "dbfs/copy/a.txt").exists() and fs.head("dbfs:/moved.txt") == "replaced"
    with pytest.raises(IsADirectoryError, match="dbfs:/copy is a non-empty directory; pass recurse=True"):
        fs.rm("dbfs:/copy")
    assert fs.rm("dbfs:/copy", recurse=True) is True
    assert fs.rm("dbfs:/copy") is False
    with pytest.raises(FileNotFoundError, match="File dbfs:/copy does not exist"):
        fs.ls("dbfs:/copy")


def test_fs_passes_local_paths_through(dbutils, tmp_path):
    target = tmp_path / "local" / "note.txt"
    dbutils.fs.put(str(target), "plain")
    assert target.read_text() == "plain"


# ---------------------------------------------------------------- task values

def test_task_values_outside_a_job_use_debug_value_then_default(dbutils):
    values = dbutils.jobs.taskValues
    assert values.get("upstream", "key", default=1, debugValue=2) == 2
    assert values.get("upstream", "key", default=1) == 1
    with pytest.raises(ConfigError, match="Must pass debugValue when calling get outside of a job context"):
        values.get("upstream", "key")


def test_task_values_inside_a_job(mlops_home):
    session = LocalSession()
    session.task_key = "train"
    LocalDbutils(session).jobs.taskValues.set("model", {"version": (3,)})
    session.task_key = "validate"
    values = LocalDbutils(session).jobs.taskValues
    assert values.get("train", "model") == {"version": [3]}
    assert values.get("train", "absent", default="d") == "d"
    with pytest.raises(ConfigError, match=r"task 'train' set no task value 'absent' \(it set: \['model'\]\)"):
        values.get("train", "absent")
    with pytest.raises(ConfigError,
                       match=r"no task values from task 'ingest': .*tasks with values: \['train'\]"):
        values.get("ingest", "rows")


def test_task_value_must_be_json(dbutils):
    with pytest.raises(ConfigError, match="task value 'when' must be JSON-serialisable, got set"):
        dbutils.jobs.taskValues.set("when", {1, 2})


def test_task_value_size_is_limited(dbutils):
    with pytest.raises(ConfigError,
                       match="task value 'big' is .* bytes as JSON; Databricks allows at most 49152"):
        dbutils.jobs.taskValues.set("big", "x" * 50_000)


def test_a_missing_secret_names_the_variable_that_would_hold_it(monkeypatch):
    monkeypatch.delenv("MLOPS_SECRET_KV_PROD_APP_INSIGHTS", raising=False)
    expected = (r"^Secret does not exist with scope: kv-prod and key: app.insights; "
                r"locally, set the environment variable MLOPS_SECRET_KV_PROD_APP_INSIGHTS$")
    with pytest.raises(ConfigError, match=expected):
        LocalDbutils(None, {}).secrets.get("kv-prod", "app.insights")
