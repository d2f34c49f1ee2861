"""A local ``dbutils`` with the parts of the Databricks API that notebooks and jobs use.

widgets
    Declared with ``text``/``dropdown``/``combobox``/``multiselect``. A value passed as a
    notebook or job parameter wins over the declared default; as on Databricks, ``get`` also
    returns a passed parameter that no widget declares.

secrets
    ``dbutils.secrets.get(scope, key)`` reads the environment variable
    ``MLOPS_SECRET_<SCOPE>_<KEY>``: scope and key upper-cased, every character that is not a
    letter or digit replaced by ``_``. Example: scope ``kv-prod``, key ``app.insights`` ->
    ``MLOPS_SECRET_KV_PROD_APP_INSIGHTS``. ``listScopes()`` returns the scopes named in
    ``MLOPS_SECRET_SCOPES`` (comma-separated) when set, else the first word after
    ``MLOPS_SECRET_`` of every such variable. Every such value is registered for redaction
    when the secrets are created, so it shows as ``[REDACTED]`` in anything the runtime prints
    or writes, as on Databricks.

fs
    :class:`~mlops.local.dbfs.LocalFs`: paths map as the platform seam says.

notebook
    ``exit(value)`` ends the notebook with an exit value; ``run(path, timeout_seconds, arguments)``
    runs another notebook with fresh widgets and returns its exit value, through the runner
    that created this ``dbutils``.

jobs.taskValues
    ``set`` stores a JSON value for the running task; ``get`` reads one set by an upstream task.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from mlops.errors import ConfigError
from mlops.observability.redaction import register_secret
from mlops.local.dbfs import LocalFs

logger = logging.getLogger(__name__)

SECRET_ENV_PREFIX = "MLOPS_SECRET_"
SECRET_SCOPES_ENV = "MLOPS_SECRET_SCOPES"
# Databricks rejects task values whose JSON form is larger than this.
MAX_TASK_VALUE_BYTES = 48 * 1024


# ---------------------------------------------------------------- widgets

@dataclass
class _Widget:
    kind: str
    default: str
    choices: Optional[list[str]]
    label: Optional[str]


class LocalWidgets:
    """``dbutils.widgets``: declared widgets plus the parameters the run was started with."""

    def __init__(self, parameters: Optional[dict[str, str]] = None):
        self._parameters = dict(parameters or {})
        self._widgets: dict[str, _Widget] = {}

    def text(self, name: str, defaultValue: str, label: Optional[str] = None) -> None:
        self._declare(name, "text", defaultValue, None, label)

    def dropdown(self, name: str, defaultValue: str, choices: list[str], label: Optional[str] = None) -> None:
        self._declare(name, "dropdown", defaultValue, choices, label)
        if defaultValue not in choices:
            raise ConfigError(f"dropdown widget '{name}': default value '{defaultValue}' "
                              f"is not one of its choices {choices}")

    def combobox(self, name: str, defaultValue: str, choices: list[str], label: Optional[str] = None) -> None:
        self._declare(name, "combobox", defaultValue, choices, label)

    def multiselect(self, name: str, defaultValue: str, choices: list[str],
                    label: Optional[str] = None) -> None:
        self._declare(name, "multiselect", defaultValue, choices, label)
        unknown = [item for item in defaultValue.split(",") if item not in choices]
        if unknown:
            raise ConfigError(f"multiselect widget '{name}': default value(s) {unknown} "
                              f"are not among its choices {choices}")

    def _declare(self, name: str, kind: str, default: str, choices: Optional[list[str]],
                 label: Optional[str]) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"widget name must be a non-empty string, got {name!r}")
        if not isinstance(default, str):
            raise ConfigError(f"widget '{name}': defaultValue must be a string, "
                              f"got {type(default).__name__} {default!r}")
        if choices is not None:
            choices = list(choices)
            if not all(isinstance(choice, str) for choice in choices):
                raise ConfigError(f"widget '{name}': choices must be strings, got {choices!r}")
        self._widgets[name] = _Widget(kind, default, choices, label)
        if name in self._parameters:
            self._check_choice(name, self._parameters[name])

    def _check_choice(self, name: str, value: str) -> None:
        widget = self._widgets[name]
        if widget.kind == "dropdown" and value not in widget.choices:
            raise ConfigError(f"value '{value}' for dropdown widget '{name}' "
                              f"is not one of its choices {widget.choices}")
        if widget.kind == "multiselect":
            unknown = [item for item in value.split(",") if item not in widget.choices]
            if unknown:
                raise ConfigError(f"value(s) {unknown} for multiselect widget '{name}' "
                                  f"are not among its choices {widget.choices}")

    def get(self, name: str) -> str:
        if name in self._parameters:
            return self._parameters[name]
        if name in self._widgets:
            return self._widgets[name].default
        raise ConfigError(f"InputWidgetNotDefined: No input widget named {name} is defined")

    def getAll(self) -> dict[str, str]:
        """Every declared widget's value and every passed parameter, declared or not."""
        values = {name: widget.default for name, widget in self._widgets.items()}
        values.update(self._parameters)
        return values

    def getArgument(self, name: str, default: Optional[str] = None) -> Optional[str]:
        try:
            return self.get(name)
        except ConfigError:
            if default is None:
                raise
            return default

    def remove(self, name: str) -> None:
        if name not in self._widgets:
            raise ConfigError(f"InputWidgetNotDefined: No input widget named {name} is defined")
        del self._widgets[name]

    def removeAll(self) -> None:
        self._widgets.clear()


# ---------------------------------------------------------------- secrets

@dataclass(frozen=True)
class SecretScope:
    name: str


@dataclass(frozen=True)
class SecretMetadata:
    key: str


def secret_env_name(scope: str, key: str) -> str:
    """The environment variable that holds secret ``key`` of ``scope``."""
    return SECRET_ENV_PREFIX + _env_word(scope) + "_" + _env_word(key)


def _env_word(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", text).upper()


class LocalSecrets:
    """``dbutils.secrets`` backed by ``MLOPS_SECRET_<SCOPE>_<KEY>`` environment variables."""

    def __init__(self):
        register_local_secrets()

    def get(self, scope: str, key: str) -> str:
        variable = secret_env_name(scope, key)
        value = os.environ.get(variable)
        if value is None:
            raise ConfigError(f"Secret does not exist with scope: {scope} and key: {key}; "
                              f"locally, set the environment variable {variable}")
        return value

    def getBytes(self, scope: str, key: str) -> bytes:
        return self.get(scope, key).encode("utf-8")

    def list(self, scope: str) -> list[SecretMetadata]:
        """Keys of ``scope``, as the lower-cased rest of each variable name after the scope."""
        prefix = SECRET_ENV_PREFIX + _env_word(scope) + "_"
        return [SecretMetadata(name[len(prefix):].lower())
                for name in sorted(os.environ) if name.startswith(prefix) and len(name) > len(prefix)]

    def listScopes(self) -> list[SecretScope]:
        declared = os.environ.get(SECRET_SCOPES_ENV)
        if declared:
            names = [name.strip() for name in declared.split(",") if name.strip()]
        else:
            names = sorted({name[len(SECRET_ENV_PREFIX):].split("_", 1)[0].lower()
                            for name in os.environ
                            if name.startswith(SECRET_ENV_PREFIX) and name != SECRET_SCOPES_ENV})
        return [SecretScope(name) for name in names if name]


def register_local_secrets() -> None:
    """Register every ``MLOPS_SECRET_*`` value for redaction: each is a secret scope's value."""
    for name, value in os.environ.items():
        if name.startswith(SECRET_ENV_PREFIX) and name != SECRET_SCOPES_ENV:
            register_secret(value)


# ---------------------------------------------------------------- notebook

class NotebookExit(Exception):
    """Raised by ``dbutils.notebook.exit`` and caught by the notebook runner.

    An Exception subclass, as on Databricks: a bare ``except Exception`` around
    ``dbutils.notebook.exit`` swallows it there too.
    """

    def __init__(self, value: Optional[str]):
        super().__init__(value)
        self.value = value


class LocalNotebookUtils:
    """``dbutils.notebook``."""

    def __init__(self, dbutils: "LocalDbutils", run_notebook: Optional[Callable]):
        self._dbutils = dbutils
        self._run_notebook = run_notebook

    def exit(self, value: Any) -> None:
        raise NotebookExit(None if value is None else str(value))

    def run(self, path: str, timeout_seconds: int = 0,
            arguments: Optional[dict[str, str]] = None) -> Optional[str]:
        """Run another notebook with fresh widgets and return its exit value.

        ``path`` is relative to the calling notebook's folder; ``.py`` may be left out.
        ``timeout_seconds`` is accepted for compatibility but not enforced locally.
        """
        if self._run_notebook is None:
            raise ConfigError("dbutils.notebook.run needs a notebook runner; run this notebook with "
                              "`mlops notebook run` or `mlops job run`")
        origin = self._dbutils.notebook_path
        base = origin.parent if origin is not None else Path.cwd()
        arguments = {str(name): str(value) for name, value in (arguments or {}).items()}
        logger.info("dbutils.notebook.run %s (timeout %ss, not enforced)", path, timeout_seconds)
        return self._run_notebook(path, base, arguments, self._dbutils.session)


# ---------------------------------------------------------------- jobs

class LocalTaskValues:
    """``dbutils.jobs.taskValues``, stored in the LocalSession so later tasks see them."""

    def __init__(self, dbutils: "LocalDbutils"):
        self._dbutils = dbutils

    def set(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"task value key must be a non-empty string, got {key!r}")
        try:
            encoded = json.dumps(value)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"task value '{key}' must be JSON-serialisable, "
                              f"got {type(value).__name__}: {error}") from error
        if len(encoded.encode("utf-8")) > MAX_TASK_VALUE_BYTES:
            raise ConfigError(f"task value '{key}' is {len(encoded)} bytes as JSON; "
                              f"Databricks allows at most {MAX_TASK_VALUE_BYTES}")
        # Store the decoded JSON so readers get what Databricks would hand them (lists, not tuples).
        stored = json.loads(encoded)
        session = self._dbutils.session
        session.task_values.setdefault(session.task_key, {})[key] = stored
        self._dbutils.task_values_set[key] = stored

    def get(self, taskKey: str, key: str, default: Any = None, debugValue: Any = None) -> Any:
        session = self._dbutils.session
        if not session.in_job:
            if debugValue is not None:
                return debugValue
            if default is not None:
                return default
            raise ConfigError("Must pass debugValue when calling get outside of a job context. "
                              f"debugValue cannot be None (taskKey='{taskKey}', key='{key}')")
        values = session.task_values.get(taskKey)
        if values is not None and key in values:
            return values[key]
        if default is not None:
            return default
        if values is None:
            ran = sorted(task for task in session.task_values if task is not None)
            raise ConfigError(f"no task values from task '{taskKey}': it has not run or set none "
                              f"(tasks with values: {ran or 'none'})")
        raise ConfigError(f"task '{taskKey}' set no task value '{key}' (it set: {sorted(values)})")


class LocalJobs:
    def __init__(self, dbutils: "LocalDbutils"):
        self.taskValues = LocalTaskValues(dbutils)


# ---------------------------------------------------------------- dbutils

class LocalDbutils:
    """The ``dbutils`` object of one notebook run."""

    def __init__(self, session, parameters: Optional[dict[str, str]] = None,
                 notebook_path: Optional[Path] = None, run_notebook: Optional[Callable] = None):
        self.session = session
        self.notebook_path = Path(notebook_path) if notebook_path is not None else None
        self.task_values_set: dict[str, Any] = {}
        self.widgets = LocalWidgets(parameters)
        self.secrets = LocalSecrets()
        self.fs = LocalFs()
        self.notebook = LocalNotebookUtils(self, run_notebook)
        self.jobs = LocalJobs(self)

    def __repr__(self) -> str:
        return f"LocalDbutils(notebook={self.notebook_path})"
