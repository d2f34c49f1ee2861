"""Run Databricks source-format notebooks locally, as a Databricks cluster would.

The runner executes the cells in one namespace holding exactly the globals Databricks gives
a notebook: ``spark``, ``dbutils``, ``display`` and ``displayHTML``. While a notebook runs,
its output goes through a filter that shows the value of every secret read through
``dbutils.secrets`` as ``[REDACTED]``, as Databricks does; failures are raised from a
redacted copy of their chain.
"""
import ast
import builtins
import contextlib
import linecache
import logging
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from mlops.errors import ConfigError, NotebookError
from mlops.local.dbutils import LocalDbutils, NotebookExit
from mlops.local.notebook_source import Cell, parse_notebook, resolve_notebook, shown_path, split_sql
from mlops.local.pip import run_pip, tail
from mlops.local.session import LocalSession
from mlops.observability.redaction import SECRET_VALUE_MARKER, redact_text, redacted_exception
from mlops.platform.context import bind

logger = logging.getLogger(__name__)

PREVIEW_ROWS = 20

_VARIABLE = re.compile(r"\$\$|\$\{(\w+)\}|\$(\w+)")


class RedactingStream:
    """A text stream that writes through to ``target`` with every secret redacted."""

    def __init__(self, target):
        self._target = target

    def write(self, text):
        return self._target.write(redact_text(text, secret_marker=SECRET_VALUE_MARKER))

    def __getattr__(self, name):
        return getattr(self._target, name)


class _Tee:
    """A text stream that writes to several streams; the first answers everything else."""

    def __init__(self, *targets):
        self._targets = targets

    def write(self, text):
        for target in self._targets:
            target.write(text)
        return len(text)

    def flush(self):
        for target in self._targets:
            target.flush()

    def __getattr__(self, name):
        return getattr(self._targets[0], name)


@contextlib.contextmanager
def output_kept_in(path: Path):
    """Also write what is printed and logged meanwhile, redacted, to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as file:
        kept = RedactingStream(file)
        handler = logging.StreamHandler(kept)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            with contextlib.redirect_stdout(_Tee(sys.stdout, kept)), \
                    contextlib.redirect_stderr(_Tee(sys.stderr, kept)):
                yield
        finally:
            root.removeHandler(handler)


@contextlib.contextmanager
def redacted_output():
    """Redact what the running notebook prints to standard output and standard error."""
    if isinstance(sys.stdout, RedactingStream):
        yield
        return
    with contextlib.redirect_stdout(RedactingStream(sys.stdout)), \
            contextlib.redirect_stderr(RedactingStream(sys.stderr)):
        yield


@dataclass
class NotebookResult:
    exit_value: Optional[str]
    task_values: dict[str, Any] = field(default_factory=dict)


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
    dbutils = LocalDbutils(session, parameters, path, run_notebook=_run_child)
    runner = _Runner(session, dbutils)
    with bind(session.context_for(path)), redacted_output():
        logger.info("running notebook %s with parameters %s", path, sorted(parameters))
        try:
            runner.run_cells(path, cells)
            exit_value = None
        except NotebookExit as done:
            exit_value = done.value
    return NotebookResult(exit_value, dict(dbutils.task_values_set))


def _run_child(reference: str, base: Path, arguments: dict, session: LocalSession) -> Optional[str]:
    """``dbutils.notebook.run``: the child notebook's exit value."""
    return run_notebook(resolve_notebook(reference, base), arguments, session).exit_value


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
        failure = None
        try:
            getattr(self, "_run_" + cell.kind)(path, cell)
        except NotebookExit:
            raise
        except Exception as error:
            cause = redacted_exception(error, SECRET_VALUE_MARKER)
            failure = NotebookError(
                f"{shown_path(path)} failed in cell {cell.number} ({cell.summary}): "
                f"{type(error).__name__}: {_first_line(cause)}")
        if failure is not None:
            # Raised outside the except block, so the raw chain is not attached as context.
            raise failure from cause

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
            chain = " -> ".join(shown_path(step) for step in [*self._running, target])
            raise NotebookError(f"%run cycle: {chain}")
        self.run_cells(target, parse_notebook(target))

    def _run_sql(self, path: Path, cell: Cell) -> None:
        result = None
        for statement in split_sql(cell.body):
            result = self.session.spark.sql(statement)
        if result is not None and result.columns:
            self.display(result)

    def _run_sh(self, path: Path, cell: Cell) -> None:
        completed = subprocess.run(["bash", "-c", cell.body], capture_output=True, text=True)
        sys.stdout.write(completed.stdout)
        if completed.returncode != 0:
            raise NotebookError(f"%sh exited with code {completed.returncode}: "
                                f"{tail(completed.stderr or completed.stdout)}")

    def _run_pip(self, path: Path, cell: Cell) -> None:
        sys.stdout.write(run_pip(shlex.split(self._expand_variables(cell.body.replace("\\\n", " ")))))

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
        target.write_text(redact_text(str(html), secret_marker=SECRET_VALUE_MARKER), encoding="utf-8")
        print(f"[displayHTML] {len(str(html))} characters written to {target}")

    def _output_file(self, prefix: str, suffix: str) -> Path:
        folder = self.session.run_output_dir()
        number = 1
        while (folder / f"{prefix}-{number}{suffix}").exists():
            number += 1
        return folder / f"{prefix}-{number}{suffix}"
