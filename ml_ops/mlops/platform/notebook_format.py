"""The Databricks source notebook format: a header line, cells between separators, magic lines."""
from pathlib import Path

HEADER = "# Databricks notebook source"
SEPARATOR = "# COMMAND ----------"
MAGIC_PREFIX = "# MAGIC"


def is_notebook(path) -> bool:
    """True when the file's first line is the notebook header."""
    with Path(path).open(encoding="utf-8-sig") as handle:
        return handle.readline().rstrip("\r\n") == HEADER
