"""``%pip`` in a local notebook: wheels by path or glob, installed into this interpreter."""
import glob
import importlib
import importlib.metadata
import logging
import os
import re
import subprocess
import sys
import zipfile

from mlops.errors import NotebookError
from mlops.platform import home, locks

logger = logging.getLogger(__name__)

# The runtime itself is imported from this package: replacing it mid-run would break the runner.
PROTECTED_PACKAGES = frozenset({"mlops"})
# Modules of the ML wheel are always reloaded after %pip, even if the wheel lists no top level.
ALWAYS_RELOADED = ("taxi_fares",)

_GLOB_CHARS = re.compile(r"[*?\[]")


def run_pip(words: list[str]) -> str:
    """Run a ``%pip`` command; wheels are installed without dependencies and reloaded."""
    if not words:
        raise NotebookError("%pip needs a command, e.g. %pip install <wheel>")
    if words[0] != "install":
        return pip(words)
    wheels, others = _resolve_install_arguments(words[1:])
    # Local runs share one environment: installs take turns, and a wheel already installed is kept.
    with locks.file_lock(locks.lock_path(home.mount_root("locks"), "pip")):
        missing = [wheel for wheel in wheels if not _installed(wheel)]
        if missing:
            pip(["install", "--quiet", "--no-deps", "--force-reinstall", *missing])
        if any(not word.startswith("-") for word in others):
            pip(["install", *others])
    _forget_modules(wheels)
    return ""


def _installed(wheel: str) -> bool:
    """True when the wheel's distribution is installed at exactly the wheel's version."""
    distribution, version = os.path.basename(wheel).split("-")[:2]
    try:
        return importlib.metadata.version(distribution) == version
    except importlib.metadata.PackageNotFoundError:
        return False


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


def pip(arguments: list[str]) -> str:
    """Run pip in this interpreter; the captured output is shown only when pip fails.

    Wheels are installed with ``--no-deps``: locally, the dependencies are already in the
    environment, and resolving them again would be slow and could replace pinned packages.
    """
    command = [sys.executable, "-m", "pip", *arguments]
    logger.info("%s", " ".join(command))
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise NotebookError(f"pip {' '.join(arguments)} failed with exit code {completed.returncode}:\n"
                            f"{tail(completed.stdout + completed.stderr, 40)}")
    return completed.stdout


def tail(text: str, lines: int = 10) -> str:
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
