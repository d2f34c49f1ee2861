"""Helpers to write small Databricks source notebooks inside a test's tmp_path."""
from pathlib import Path

import pytest

from mlops.errors import NotebookError
from mlops.local.notebook import run_notebook

FIXTURES = Path(__file__).parent / "fixtures"
NOTEBOOKS = FIXTURES / "notebooks"
JOBS = FIXTURES / "jobs"


def write_notebook(path: Path, *cells: str) -> Path:
    """Write cells (Python source, or '# MAGIC ...' lines) as a source-format notebook."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "\n\n# COMMAND ----------\n\n".join(cell.strip("\n") for cell in cells)
    path.write_text("# Databricks notebook source\n" + body + "\n", encoding="utf-8")
    return path


def assert_cell_fails(session, path: Path, source: str, message_pattern: str) -> pytest.ExceptionInfo:
    """Run a one-cell notebook; it must fail with a NotebookError matching ``message_pattern``."""
    notebook = write_notebook(path, source)
    with pytest.raises(NotebookError, match=message_pattern) as caught:
        run_notebook(notebook, {}, session)
    return caught
