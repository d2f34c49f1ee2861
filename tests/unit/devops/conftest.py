"""Fixtures for the deployment tests: the repository's bundle files."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
JOBS_DIR = REPO_ROOT / "databricks_jobs"
TARGETS = ("dev", "staging", "prod")
