"""A Databricks bundle (``databricks.yml`` and its includes) read for one target, as the CLI reads it.

What is resolved, as ``databricks bundle validate`` resolves it:

* ``include`` globs, relative to the bundle root; a resource defined twice is an error;
* the target: the one named, else the one with ``default: true``;
* target overrides: ``variables``, ``workspace``, ``run_as``, and ``resources`` merged into the
  top-level ones (a job's ``tasks``, ``job_clusters`` and ``parameters`` merged by key);
* variables: ``--var name=value`` first, then ``BUNDLE_VAR_<name>``, the target's value, the
  default; complex variables keep their structure;
* references ``${var.*}``, ``${bundle.name|target|git.commit}``, ``${workspace.*}`` and
  ``${resources.<kind>.<key>.<field>}``, until none is left.

Locally the workspace is this machine: ``${workspace.file_path}`` is the bundle root itself,
where the synced files already are, and ``${workspace.current_user.userName}`` the login name.
``${resources.jobs.<key>.id}`` stays as written; the local runner starts that job of the bundle.
"""
import copy
import getpass
import glob
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from mlops.errors import JobError

BUNDLE_FILE = "databricks.yml"
VARIABLE_ENV_PREFIX = "BUNDLE_VAR_"
REFERENCE = re.compile(r"\$\{([A-Za-z0-9_.\[\]-]+)\}")
JOB_ID_REFERENCE = re.compile(r"^\$\{resources\.jobs\.([A-Za-z0-9_-]+)\.id\}$")
# How a target's resource lists merge: an entry replaces the one with the same key.
_LIST_KEYS = {"tasks": "task_key", "job_clusters": "job_cluster_key", "parameters": "name"}
_MAX_PASSES = 10


class BundleError(JobError):
    """A bundle that cannot be read or resolved; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class Bundle:
    """One bundle resolved for one target."""

    root: Path
    target: str
    config: dict
    # (kind, key) -> the file that defines the resource; relative paths in it start there.
    sources: dict

    def resources(self, kind: str) -> dict:
        return self.config.get("resources", {}).get(kind, {}) or {}

    def job_settings(self, key: str) -> dict:
        jobs = self.resources("jobs")
        if key not in jobs:
            raise BundleError(f"the bundle in {self.root} has no job '{key}' (jobs: "
                              f"{', '.join(sorted(jobs)) or 'none'})")
        return jobs[key]

    def source(self, kind: str, key: str) -> Path:
        return self.sources[(kind, key)]


def find_root(start: Optional[Path] = None) -> Path:
    """The folder of the nearest ``databricks.yml``, from ``start`` (default: here) upwards."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / BUNDLE_FILE).is_file():
            return folder
    raise BundleError(f"no {BUNDLE_FILE} in {start} or a folder above it: run from the bundle's folder")


def read_yaml(path: Path) -> dict:
    """One bundle file as a mapping; BundleError names the file and the line of a syntax error."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise BundleError(f"{path}: cannot read it: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise BundleError(f"{path}{where}: not valid YAML: {getattr(error, 'problem', error)}") from error
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise BundleError(f"{path}: a bundle file holds a mapping of top-level keys, "
                          f"got {type(document).__name__}")
    return document


def bundle_files(root: Path) -> list:
    """``databricks.yml`` and the files its ``include`` globs match, in the order the CLI reads them."""
    main = root / BUNDLE_FILE
    includes = read_yaml(main).get("include", []) or []
    if not isinstance(includes, list) or not all(isinstance(item, str) for item in includes):
        raise BundleError(f"{main}: 'include' must be a list of glob patterns, e.g. [databricks_jobs/*.yml]")
    files = [main]
    for pattern in includes:
        matched = sorted(Path(path) for path in glob.glob(str(root / pattern)))
        if not matched:
            raise BundleError(f"{main}: include '{pattern}' matches no file; fix the pattern or remove it")
        files += [path for path in matched if path not in files]
    return files


def load_bundle(root: Optional[Path] = None, target: Optional[str] = None,
                variables: Optional[dict] = None) -> Bundle:
    """The bundle at ``root`` (default: found from here) for ``target`` (default: the default target)."""
    root = Path(root).resolve() if root else find_root()
    config, sources = _merged_files(root)
    target_name = _target_name(root, config, target)
    target_settings = (config.get("targets") or {}).get(target_name) or {}
    _apply_target(config, target_settings)
    values = _variable_values(root, config, target_name, target_settings, variables or {})
    config["bundle"] = {**(config.get("bundle") or {}), "target": target_name,
                        "git": {"commit": _git_commit(root)}}
    config["workspace"] = {**_workspace(config, target_name), "file_path": str(root)}
    config["variables"] = values
    return Bundle(root=root, target=target_name, config=_resolve(config, values, root, sources),
                  sources=sources)


def _merged_files(root: Path) -> tuple:
    config: dict = {}
    sources: dict = {}
    for path in bundle_files(root):
        document = read_yaml(path)
        for kind, entries in (document.get("resources") or {}).items():
            for key in (entries or {}):
                if (kind, key) in sources:
                    raise BundleError(f"{path}: resources.{kind}.{key} is also defined in "
                                      f"{sources[(kind, key)]}; a resource is defined once")
                sources[(kind, key)] = path
        _merge(config, {name: value for name, value in document.items() if name != "include"})
    return config, sources


def _target_name(root: Path, config: dict, target: Optional[str]) -> str:
    targets = config.get("targets") or {}
    if target:
        if target not in targets:
            raise BundleError(f"{root / BUNDLE_FILE}: no target '{target}' (targets: "
                              f"{', '.join(targets) or 'none'}); pass one of them with --target")
        return target
    defaults = [name for name, settings in targets.items() if (settings or {}).get("default")]
    if len(defaults) != 1:
        raise BundleError(f"{root / BUNDLE_FILE}: name a target with --target "
                          f"({', '.join(targets) or 'none'}); "
                          f"{'no' if not defaults else 'more than one'} target sets default: true")
    return defaults[0]


def _apply_target(config: dict, target: dict) -> None:
    for key in ("resources", "workspace", "run_as", "artifacts", "sync", "presets", "permissions"):
        if key in target:
            config[key] = _merge(config.get(key) or {}, copy.deepcopy(target[key]))


def _merge(base: Any, override: Any) -> Any:
    """``override`` merged into ``base``: mappings by key, keyed lists by their entries' key."""
    if isinstance(base, dict) and isinstance(override, dict):
        for key, value in override.items():
            if key in _LIST_KEYS and isinstance(base.get(key), list) and isinstance(value, list):
                base[key] = _merge_list(base[key], value, _LIST_KEYS[key])
            else:
                base[key] = _merge(base[key], value) if key in base else value
        return base
    return override


def _merge_list(base: list, override: list, key: str) -> list:
    merged = {entry.get(key): entry for entry in base if isinstance(entry, dict)}
    for entry in override:
        name = entry.get(key) if isinstance(entry, dict) else None
        merged[name] = _merge(merged[name], entry) if name in merged else entry
    return list(merged.values())


def _variable_values(root: Path, config: dict, target_name: str, target: dict, given: dict) -> dict:
    declared = config.get("variables") or {}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise BundleError(f"--var {', '.join(unknown)}: not a variable of the bundle in {root} "
                          f"(variables: {', '.join(sorted(declared))})")
    values = {}
    for name, spec in declared.items():
        spec = spec if isinstance(spec, dict) else {"default": spec}
        override = (target.get("variables") or {}).get(name)
        if isinstance(override, dict) and spec.get("type") != "complex":
            override = override.get("default")
        for candidate in (given.get(name), os.environ.get(VARIABLE_ENV_PREFIX + name), override,
                          spec.get("default")):
            if candidate is not None:
                values[name] = candidate
                break
        else:
            raise BundleError(f"{root / BUNDLE_FILE}: variable '{name}' has no value for target "
                              f"'{target_name}': set targets.{target_name}.variables.{name}, give it a "
                              f"default, or pass --var {name}=VALUE")
    return values


def _workspace(config: dict, target_name: str) -> dict:
    workspace = dict(config.get("workspace") or {})
    user = getpass.getuser()
    workspace["current_user"] = {"userName": user, "short_name": user}
    workspace.setdefault("root_path", f"/Workspace/Users/{user}/.bundle/{config['bundle'].get('name', '')}/"
                                      f"{target_name}")
    workspace.setdefault("artifact_path", f"{workspace['root_path']}/artifacts")
    return workspace


def _git_commit(root: Path) -> str:
    try:
        completed = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                   timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return completed.stdout.strip() if completed.returncode == 0 else ""


def lookup(config: dict, reference: str) -> Any:
    """The value at a dotted ``reference`` such as ``resources.schemas.taxi_fares.name``."""
    value: Any = config
    for part in reference.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(reference)
        value = value[part]
    return value


def _resolve(config: dict, values: dict, root: Path, sources: dict) -> dict:
    context = {**config, "var": values}

    def file_of(where: str) -> Path:
        parts = where.split(".")
        if parts[0] == "resources" and len(parts) > 2:
            return sources.get((parts[1], parts[2].split("[")[0]), root / BUNDLE_FILE)
        return root / BUNDLE_FILE

    for _ in range(_MAX_PASSES):
        changed = []
        config = _substitute(config, context, changed, file_of, "")
        context = {**config, "var": values}
        if not changed:
            return config
    raise BundleError(f"{root / BUNDLE_FILE}: references still unresolved after {_MAX_PASSES} passes; "
                      "two values refer to each other")


def _substitute(value: Any, context: dict, changed: list, file_of, where: str) -> Any:
    if isinstance(value, dict):
        return {key: _substitute(item, context, changed, file_of, f"{where}.{key}".lstrip("."))
                for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, context, changed, file_of, f"{where}[{index}]")
                for index, item in enumerate(value)]
    if not isinstance(value, str) or "${" not in value or JOB_ID_REFERENCE.match(value):
        return value
    whole = REFERENCE.fullmatch(value)
    if whole:
        changed.append(where)
        return copy.deepcopy(_referenced(whole.group(1), context, file_of, where))
    replaced = REFERENCE.sub(lambda match: str(_referenced(match.group(1), context, file_of, where)), value)
    if replaced != value:
        changed.append(where)
    return replaced


def _referenced(reference: str, context: dict, file_of, where: str) -> Any:
    try:
        return lookup(context, reference)
    except KeyError:
        kind = reference.split(".", 1)[0]
        hint = {"var": "declare it under 'variables' in databricks.yml",
                "resources": "define that resource, or fix the name"}.get(
            kind, "use ${var.*}, ${bundle.*}, ${workspace.*} or ${resources.*}")
        raise BundleError(f"{file_of(where)}: {where}: unknown reference ${{{reference}}}; {hint}") from None
