"""Helpers to write small Databricks source notebooks inside a test's tmp_path."""
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
NOTEBOOKS = FIXTURES / "notebooks"
JOBS = FIXTURES / "jobs"


def write_notebook(path: Path, *cells: str) -> Path:
    """Write cells (Python source, or '# MAGIC ...' lines) as a source-format notebook."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "\n\n# COMMAND ----------\n\n".join(cell.strip("\n") for cell in cells)
    path.write_text("# Databricks notebook source\n" + body + "\n", encoding="utf-8")
    return path
