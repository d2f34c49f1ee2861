"""Parse Databricks source-format notebooks (``.py`` files exported from a workspace).

A notebook starts with ``# Databricks notebook source``; cells are separated by
``# COMMAND ----------``; magic cells have every line prefixed with ``# MAGIC``.
Supported cells: Python (and ``%python``), ``%pip``, ``%sql``, ``%run``, ``%sh``; ``%md``
cells are skipped. Other magics (``%scala``, ``%r``, ``%fs``) fail the parse.
"""
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from mlops.errors import NotebookError
from mlops.platform.notebook_format import HEADER, MAGIC_PREFIX, SEPARATOR

_MAGIC_KINDS = {"python": "python", "pip": "pip", "sql": "sql", "md": "md", "md-sandbox": "md",
                "run": "run", "sh": "sh"}


@dataclass(frozen=True)
class Cell:
    """One notebook cell. ``body`` is the text after the magic word for magic cells."""

    number: int
    kind: str
    body: str
    first_line: int

    @property
    def summary(self) -> str:
        """The first line of code, for error messages."""
        prefix = "" if self.kind == "python" else f"%{self.kind} "
        for line in self.body.splitlines():
            stripped = line.strip()
            if stripped and not (self.kind == "python" and stripped.startswith("#")):
                text = prefix + stripped
                return text if len(text) <= 80 else text[:77] + "..."
        return prefix.strip() or "empty cell"


def parse_notebook(path: Union[str, Path]) -> list[Cell]:
    """Split a source-format notebook into cells; NotebookError if it is not one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise NotebookError(f"cannot read notebook {path}: {error}") from error
    lines = text.splitlines()
    if not lines or lines[0].rstrip() != HEADER:
        raise NotebookError(f"{path} is not a Databricks source notebook: "
                            f"its first line must be '{HEADER}'")
    chunks: list[tuple[int, list[str]]] = [(2, [])]
    for line_number, line in enumerate(lines[1:], start=2):
        if line.rstrip() == SEPARATOR:
            chunks.append((line_number + 1, []))
        else:
            chunks[-1][1].append(line)
    return [_parse_cell(path, number, start, chunk)
            for number, (start, chunk) in enumerate(chunks, start=1)]


def _parse_cell(path: Path, number: int, start: int, lines: list[str]) -> Cell:
    while lines and not lines[0].strip():
        lines, start = lines[1:], start + 1
    if not lines:
        return Cell(number, "empty", "", start)
    if not lines[0].startswith(MAGIC_PREFIX):
        return Cell(number, "python", "\n".join(lines), start)
    text = "\n".join(line[len(MAGIC_PREFIX) + 1:] if line.startswith(MAGIC_PREFIX + " ") else
                     ("" if line.rstrip() == MAGIC_PREFIX else line) for line in lines)
    magic = re.match(r"\s*%(\S+)", text)
    if not magic:
        raise NotebookError(f"{path} cell {number} (line {start}) is a '# MAGIC' cell without a %magic")
    kind = _MAGIC_KINDS.get(magic.group(1))
    if kind is None:
        raise NotebookError(
            f"{path} cell {number} (line {start}) uses %{magic.group(1)}, which the local runtime "
            f"does not run (supported: {', '.join('%' + name for name in _MAGIC_KINDS)})")
    return Cell(number, kind, text[magic.end():].strip(), start)


def resolve_notebook(reference: str, base: Path) -> Path:
    """The notebook file ``reference`` names, relative to folder ``base``; ``.py`` is optional."""
    target = Path(reference)
    if not target.is_absolute():
        target = base / target
    candidates = [target] if target.suffix == ".py" else [target.with_name(target.name + ".py"), target]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise NotebookError(f"notebook '{reference}' not found (looked for "
                        f"{', '.join(str(candidate) for candidate in candidates)})")


def split_sql(text: str) -> list[str]:
    """Split on semicolons outside quotes and comments."""
    statements, current, quote = [], [], None
    index = 0
    while index < len(text):
        char = text[index]
        if quote:
            current.append(char)
            if char == quote:
                quote = None
        elif char in "'\"`":
            quote = char
            current.append(char)
        elif text.startswith("--", index):
            end = text.find("\n", index)
            index = len(text) if end == -1 else end
            continue
        elif char == ";":
            statements.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    statements.append("".join(current))
    return [statement.strip() for statement in statements if statement.strip()]


def shown_path(path: Path) -> str:
    """``path`` relative to the working folder when it is inside it, for messages."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
