"""``mlops bundle check``: what ``databricks bundle validate`` does not check, for every target.

* every ``${var.*}`` is declared and has a value in every target;
* every ``${resources.<kind>.<key>.<field>}`` names a resource that exists, and a field it sets;
* every notebook path, and the artifact's folder and wheel files, exist;
* each notebook task and its job agree on parameters: the notebook's config reads every
  parameter it needs from the job, and the job passes nothing the notebook would reject
  (Databricks hands every job parameter to every task).

Each problem names the file, the key and the fix.
"""
import ast
import glob
import re
from pathlib import Path
from typing import Iterator, Optional

from mlops import config as configs
from mlops.local.bundle import (BUNDLE_FILE, JOB_ID_REFERENCE, REFERENCE, BundleError, bundle_files,
                                load_bundle, read_yaml)

# Fields Databricks sets on deploy; a reference to them needs no value in the files.
_DEPLOY_TIME_FIELDS = ("id", "url")
_CONFIG_READ = re.compile(r"\b([A-Z]\w*Config)\.from_notebook\(")
_WIDGET = re.compile(r"dbutils\.widgets\.(?:text|dropdown|combobox|multiselect|get)\(\s*[\"'](\w+)[\"']")


def check_bundle(root: Path, targets: Optional[list] = None) -> list:
    """Every problem of the bundle at ``root``, as 'file: key: what is wrong; the fix' lines."""
    files = bundle_files(root)
    documents = {path: read_yaml(path) for path in files}
    declared_targets = list((documents[root / BUNDLE_FILE].get("targets") or {}))
    targets = targets or declared_targets
    problems = list(_variable_problems(root, documents, targets))
    problems += _reference_problems(documents)
    problems += _artifact_problems(root, documents[root / BUNDLE_FILE])
    for target in targets:
        try:
            bundle = load_bundle(root, target)
        except BundleError as error:
            problems.append(f"target {target}: {error}")
            continue
        problems += [f"target {target}: {problem}" for problem in _job_problems(bundle)]
    return sorted(set(problems), key=problems.index)


def _walk(value, where: str = "") -> Iterator[tuple]:
    """(key path, string) for every string in a YAML document."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{where}.{key}".lstrip("."))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{where}[{index}]")
    elif isinstance(value, str):
        yield where, value


def _variable_problems(root: Path, documents: dict, targets: list) -> Iterator[str]:
    main = documents[root / BUNDLE_FILE]
    declared = main.get("variables") or {}
    target_settings = main.get("targets") or {}
    for path, document in documents.items():
        for where, text in _walk(document):
            for reference in REFERENCE.findall(text):
                if not reference.startswith("var."):
                    continue
                name = reference.split(".")[1].split("[")[0]
                if name not in declared:
                    yield (f"{path}: {where}: ${{var.{name}}} is not declared; add '{name}' under "
                           f"'variables' in {BUNDLE_FILE}")
    for name, spec in declared.items():
        has_default = isinstance(spec, dict) and "default" in spec
        for target in targets:
            given = ((target_settings.get(target) or {}).get("variables") or {})
            if not has_default and name not in given:
                yield (f"{root / BUNDLE_FILE}: targets.{target}.variables: no value for variable '{name}', "
                       "which has no default; set it there or give the variable a default")


def _reference_problems(documents: dict) -> Iterator[str]:
    defined = {}
    for document in documents.values():
        for kind, entries in (document.get("resources") or {}).items():
            for key, settings in (entries or {}).items():
                defined[(kind, key)] = settings or {}
        for target in (document.get("targets") or {}).values():
            for kind, entries in ((target or {}).get("resources") or {}).items():
                for key, settings in (entries or {}).items():
                    defined.setdefault((kind, key), settings or {})
    for path, document in documents.items():
        for where, text in _walk(document):
            for reference in REFERENCE.findall(text):
                parts = reference.split(".")
                if parts[0] != "resources":
                    continue
                if len(parts) < 4:
                    yield (f"{path}: {where}: ${{{reference}}} must name a field: "
                           "${resources.<kind>.<key>.<field>}")
                    continue
                kind, key, field = parts[1], parts[2], parts[3]
                if (kind, key) not in defined:
                    known = ", ".join(sorted(k for c, k in defined if c == kind)) or "none"
                    yield (f"{path}: {where}: ${{{reference}}} refers to resources.{kind}.{key}, which no "
                           f"file defines ({kind}: {known}); define it or fix the key")
                elif field not in _DEPLOY_TIME_FIELDS and field not in defined[(kind, key)]:
                    yield (f"{path}: {where}: ${{{reference}}}: resources.{kind}.{key} does not set "
                           f"'{field}'; set it there or refer to a field it sets")


def _artifact_problems(root: Path, main: dict) -> Iterator[str]:
    for name, artifact in (main.get("artifacts") or {}).items():
        folder = root / (artifact or {}).get("path", ".")
        if not folder.is_dir():
            yield f"{root / BUNDLE_FILE}: artifacts.{name}.path: folder {folder} does not exist"
            continue
        for index, entry in enumerate((artifact or {}).get("files") or []):
            pattern = entry.get("source", "") if isinstance(entry, dict) else ""
            if not glob.glob(str(folder / pattern)):
                yield (f"{root / BUNDLE_FILE}: artifacts.{name}.files[{index}].source: no file matches "
                       f"{pattern} under {folder}; build the wheels first (python setup.py wheels)")


def _job_problems(bundle) -> Iterator[str]:
    for key, job in bundle.resources("jobs").items():
        source = bundle.source("jobs", key)
        passed = {entry.get("name") for entry in job.get("parameters") or []}
        for index, task in enumerate(job.get("tasks") or []):
            where = f"{source}: resources.jobs.{key}.tasks[{index}]"
            run_job = (task.get("run_job_task") or {}).get("job_id", "")
            match = JOB_ID_REFERENCE.match(run_job) if isinstance(run_job, str) else None
            if run_job and (match is None or match.group(1) not in bundle.resources("jobs")):
                yield (f"{where}.run_job_task.job_id: {run_job!r} must be "
                       "${resources.jobs.<a job of the bundle>.id}")
            notebook = (task.get("notebook_task") or {}).get("notebook_path")
            if not notebook:
                continue
            path = Path(notebook) if Path(notebook).is_absolute() else source.parent / notebook
            if not path.is_file():
                yield f"{where}.notebook_task.notebook_path: {notebook} does not exist (looked for {path})"
                continue
            given = passed | set((task.get("notebook_task") or {}).get("base_parameters") or {})
            yield from _parameter_problems(where, path, given, passed)


def notebook_parameters(path: Path) -> Optional[tuple]:
    """(config class name, the parameter names the notebook reads), or None when it reads any name."""
    text = path.read_text(encoding="utf-8")
    ast.parse(text)
    widgets = set(_WIDGET.findall(text))
    names = set(_CONFIG_READ.findall(text))
    if not names:
        return ("widgets", widgets) if widgets else None
    (name, *others) = sorted(names)
    config = getattr(configs, name, None)
    if others or config is None:
        raise BundleError(f"{path}: reads {', '.join(sorted(names))}; a notebook parses one config "
                          "of mlops.config")
    return name, widgets | set(config.parameter_names()) - set(config.NOT_IN_JOB_FILE)


def _parameter_problems(where: str, notebook: Path, given: set, passed: set) -> Iterator[str]:
    read = notebook_parameters(notebook)
    if read is None:
        return
    config, names = read
    for name in sorted(names - given):
        yield (f"{where}: notebook {notebook.name} reads parameter '{name}' ({config}), which the job does "
               f"not declare; add {{name: {name}, default: ...}} to the job's parameters")
    if config != "widgets":
        for name in sorted(passed - names):
            yield (f"{where}: the job passes parameter '{name}' to every task, and {notebook.name} "
                   f"({config}) rejects it; remove it from the job, or make it a field of {config}")
