"""Parse and run Databricks source-format notebooks (``.py`` files exported from a workspace).

A notebook starts with ``# Databricks notebook source``; cells are separated by
``# COMMAND ----------``; magic cells have every line prefixed with ``# MAGIC``. The runner
executes the cells in one namespace holding exactly the globals Databricks gives a notebook:
``spark``, ``dbutils``, ``display`` and ``displayHTML``.

Supported cells: Python (and ``%python``), ``%pip``, ``%sql``, ``%run``, ``%sh``; ``%md``
cells are skipped. Other magics (``%scala``, ``%r``, ``%fs``) fail the parse.
"""
import ast
import builtins
import glob
import importlib
import linecache
import logging
import os
import re
import shlex
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from mlops.errors import ConfigError, NotebookError
from mlops.local.dbutils import LocalDbutils, NotebookExit
from mlops.local.session import LocalSession, notebook_context

logger = logging.getLogger(__name__)

HEADER = "# Databricks notebook source"
SEPARATOR = "# COMMAND ----------"
MAGIC_PREFIX = "# MAGIC"
PREVIEW_ROWS = 20
# The runtime itself is imported from this package: replacing it mid-run would break the runner.
PROTECTED_PACKAGES = frozenset({"mlops"})
# Modules of the ML wheel are always reloaded after %pip, even if the wheel lists no top level.
ALWAYS_RELOADED = ("taxi_fares",)

_MAGIC_KINDS = {"python": "python", "pip": "pip", "sql": "sql", "md": "md", "md-sandbox": "md",
                "run": "run", "sh": "sh"}
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)\}|\$(\w+)")
_GLOB_CHARS = re.compile(r"[*?\[]")


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


@dataclass
class NotebookResult:
    exit_value: Optional[str]
    task_values: dict[str, Any] = field(default_factory=dict)


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


def run_notebook(path: Union[str, Path], parameters: Optional[dict[str, str]] = None,
                 session: Optional[LocalSession] = None) -> NotebookResult:
    """Run every cell of a notebook with ``parameters`` as widget values.

    Raises NotebookError naming the notebook and the cell when a cell fails, chained to
    the original exception. ``dbutils.notebook.exit`` ends the run early.
    """
    path = Path(path).absolute()
    parameters = dict(parameters or {})
    bad = {name: value for name, value in parameters.items()
           if not isinstance(name, str) or not isinstance(value, str)}
    if bad:
        raise ConfigError(f"notebook parameters must be strings, got {bad!r}")
    session = session if session is not None else LocalSession()
    cells = parse_notebook(path)
    dbutils = LocalDbutils(session, parameters, path)
    runner = _Runner(session, dbutils)
    with notebook_context(session.context_for(path)):
        logger.info("running notebook %s with parameters %s", path, sorted(parameters))
        try:
            runner.run_cells(path, cells)
            exit_value = None
        except NotebookExit as done:
            exit_value = done.value
    return NotebookResult(exit_value, dict(dbutils.task_values_set))


def _shown_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _first_line(error: BaseException) -> str:
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return ""


class _Runner:
    """Runs cells of one notebook (and the notebooks it %runs) in one namespace."""

    def __init__(self, session: LocalSession, dbutils: LocalDbutils):
        self.session = session
        self.dbutils = dbutils
        self.namespace: dict[str, Any] = {
            "__name__": "__main__",
            "__builtins__": builtins,
            "spark": session.spark,
            "dbutils": dbutils,
            "display": self.display,
            "displayHTML": self.display_html,
        }
        self._running: list[Path] = []

    def run_cells(self, path: Path, cells: list[Cell]) -> None:
        self._running.append(path)
        try:
            for cell in cells:
                self._run_cell(path, cell)
        finally:
            self._running.pop()

    def _run_cell(self, path: Path, cell: Cell) -> None:
        if cell.kind in ("md", "empty"):
            return
        logger.debug("%s cell %d: %s", path, cell.number, cell.summary)
        try:
            getattr(self, "_run_" + cell.kind)(path, cell)
        except NotebookExit:
            raise
        except Exception as error:
            raise NotebookError(
                f"{_shown_path(path)} failed in cell {cell.number} ({cell.summary}): "
                f"{type(error).__name__}: {_first_line(error)}") from error

    # -- cell kinds

    def _run_python(self, path: Path, cell: Cell) -> None:
        filename = f"{path} [cell {cell.number}]"
        # Registering the source lets tracebacks show the failing line of the cell.
        linecache.cache[filename] = (len(cell.body), None, cell.body.splitlines(True), filename)
        tree = ast.parse(cell.body, filename=filename)
        last = tree.body[-1] if tree.body else None
        if isinstance(last, ast.Expr):
            # Like a notebook, show the value of a cell's last expression.
            tree.body.pop()
            exec(compile(tree, filename, "exec"), self.namespace)
            value = eval(compile(ast.Expression(last.value), filename, "eval"), self.namespace)
            if value is not None:
                print(repr(value))
        else:
            exec(compile(tree, filename, "exec"), self.namespace)

    def _run_run(self, path: Path, cell: Cell) -> None:
        words = shlex.split(cell.body)
        if len(words) != 1:
            raise NotebookError(f"%run takes one notebook path here, got {cell.body!r} "
                                "(passing widget values to %run is not supported locally)")
        target = resolve_notebook(words[0], path.parent)
        if target in self._running:
            chain = " -> ".join(_shown_path(step) for step in [*self._running, target])
            raise NotebookError(f"%run cycle: {chain}")
        self.run_cells(target, parse_notebook(target))

    def _run_sql(self, path: Path, cell: Cell) -> None:
        result = None
        for statement in _split_sql(cell.body):
            result = self.session.spark.sql(statement)
        if result is not None and result.columns:
            self.display(result)

    def _run_sh(self, path: Path, cell: Cell) -> None:
        completed = subprocess.run(["bash", "-c", cell.body], capture_output=True, text=True)
        sys.stdout.write(completed.stdout)
        if completed.returncode != 0:
            raise NotebookError(f"%sh exited with code {completed.returncode}: "
                                f"{_tail(completed.stderr or completed.stdout)}")

    def _run_pip(self, path: Path, cell: Cell) -> None:
        words = shlex.split(self._expand_variables(cell.body.replace("\\\n", " ")))
        if not words:
            raise NotebookError("%pip needs a command, e.g. %pip install <wheel>")
        if words[0] != "install":
            output = _pip(words)
            sys.stdout.write(output)
            return
        wheels, others = _resolve_install_arguments(words[1:])
        if wheels:
            _pip(["install", "--quiet", "--no-deps", "--force-reinstall", *wheels])
        if any(not word.startswith("-") for word in others):
            _pip(["install", *others])
        _forget_modules(wheels)

    def _expand_variables(self, text: str) -> str:
        def value_of(match: re.Match) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group(1) or match.group(2)
            if name in self.namespace:
                return str(self.namespace[name])
            try:
                return self.dbutils.widgets.get(name)
            except ConfigError as error:
                raise NotebookError(f"%pip uses ${name}, which is neither a notebook variable "
                                    "nor a widget") from error
        return _VARIABLE.sub(value_of, text)

    # -- display

    def display(self, value: Any = None, *args: Any, **kwargs: Any) -> None:
        """Print a preview of a DataFrame; save a matplotlib figure to the run folder."""
        from pyspark.sql import DataFrame

        module = type(value).__module__ or ""
        if isinstance(value, DataFrame):
            value.show(PREVIEW_ROWS)
        elif module.startswith("pandas") and hasattr(value, "head"):
            print(value.head(PREVIEW_ROWS).to_string())
        elif module.startswith("matplotlib") and hasattr(value, "savefig"):
            target = self._output_file("display", ".png")
            value.savefig(target)
            print(f"[display] figure saved to {target}")
        elif value is not None:
            print(value)

    def display_html(self, html: str) -> None:
        """Write the HTML to the run folder and print where it went."""
        target = self._output_file("displayHTML", ".html")
        target.write_text(str(html), encoding="utf-8")
        print(f"[displayHTML] {len(str(html))} characters written to {target}")

    def _output_file(self, prefix: str, suffix: str) -> Path:
        folder = self.session.run_output_dir()
        number = 1
        while (folder / f"{prefix}-{number}{suffix}").exists():
            number += 1
        return folder / f"{prefix}-{number}{suffix}"


def _split_sql(text: str) -> list[str]:
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


def _resolve_install_arguments(arguments: list[str]) -> tuple[list[str], list[str]]:
    """Expand wheel paths and globs; returns (wheel files, other pip arguments)."""
    wheels: list[str] = []
    others: list[str] = []
    for argument in arguments:
        is_pattern = bool(_GLOB_CHARS.search(argument))
        if argument.startswith("-") or not (is_pattern or argument.endswith(".whl")):
            others.append(argument)
            continue
        matches = sorted(glob.glob(os.path.expanduser(argument)))
        if not matches:
            folder = os.path.dirname(argument) or "."
            raise NotebookError(
                f"no wheel matches '{argument}' (wheel_path='{folder}'): build the wheels with "
                "`make wheels` or set the wheel_path parameter")
        by_distribution: dict[str, list[str]] = {}
        for match in matches:
            if match.endswith(".whl"):
                name = os.path.basename(match).split("-")[0].lower()
                by_distribution.setdefault(name, []).append(match)
            else:
                others.append(match)
        for name, files in by_distribution.items():
            if len(files) > 1:
                raise NotebookError(
                    f"'{argument}' matches {len(files)} wheels of {name}: "
                    f"{', '.join(os.path.basename(file) for file in files)}; "
                    "set the wheel_version parameter to pick one (or delete the stale wheels)")
            wheels.extend(files)
    return wheels, others


def _pip(arguments: list[str]) -> str:
    """Run pip in this interpreter; the captured output is shown only when pip fails.

    Wheels are installed with ``--no-deps``: locally, the dependencies are already in the
    environment, and resolving them again would be slow and could replace pinned packages.
    """
    command = [sys.executable, "-m", "pip", *arguments]
    logger.info("%s", " ".join(command))
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise NotebookError(f"pip {' '.join(arguments)} failed with exit code {completed.returncode}:\n"
                            f"{_tail(completed.stdout + completed.stderr, 40)}")
    return completed.stdout


def _tail(text: str, lines: int = 10) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _forget_modules(wheels: list[str]) -> None:
    """Drop already-imported modules of freshly installed packages so imports load the new code."""
    importlib.invalidate_caches()
    packages = set(ALWAYS_RELOADED)
    for wheel in wheels:
        packages.update(_top_level_names(wheel))
    packages -= PROTECTED_PACKAGES
    for name in list(sys.modules):
        if name.split(".", 1)[0] in packages:
            del sys.modules[name]


def _top_level_names(wheel: str) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        names = set()
        for member in archive.namelist():
            top = member.split("/", 1)[0]
            if top.endswith((".dist-info", ".data")):
                continue
            names.add(top[:-3] if top.endswith(".py") else top)
    return names
