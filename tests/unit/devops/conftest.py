"""Fixtures for the deploy tests: the repository's files and a fake Databricks workspace."""
from pathlib import Path

import pytest

from support.databricks_api import databricks_api, isolate_databricks_config  # noqa: F401  (a fixture)

REPO_ROOT = Path(__file__).resolve().parents[3]
JOBS_DIR = REPO_ROOT / "databricks_jobs"
ENVIRONMENTS = ("dev", "staging", "prod")
WHEEL_VERSION = "0.1.0+b42"


@pytest.fixture(autouse=True)
def no_ambient_databricks_credentials(monkeypatch, tmp_path):
    """No developer's DATABRICKS_* variables or ~/.databrickscfg may reach these tests."""
    isolate_databricks_config(monkeypatch, tmp_path)


@pytest.fixture
def wheels_dir(tmp_path):
    """A dist/ folder with both project wheels of WHEEL_VERSION (their bytes are never installed)."""
    folder = tmp_path / "dist"
    folder.mkdir()
    for distribution in ("taxi_fares", "taxi_fares_mlops"):
        (folder / f"{distribution}-{WHEEL_VERSION}-py3-none-any.whl").write_bytes(
            f"wheel bytes of {distribution}".encode())
    return folder
