"""Where a URI lives for the driver's file I/O and for Spark, on Databricks and locally.

Each URI kind maps as Databricks documents it ("Work with files on Databricks"):

==========================  ===========================  ===============================
URI                         driver path (Databricks)     Spark path (Databricks)
==========================  ===========================  ===============================
``dbfs:/a``                 ``/dbfs/a``                  ``dbfs:/a``
``dbfs:/Volumes/c/s/v/a``   ``/Volumes/c/s/v/a``         ``dbfs:/Volumes/c/s/v/a``
``/dbfs/a``                 ``/dbfs/a``                  ``dbfs:/a``
``/Volumes/c/s/v/a``        ``/Volumes/c/s/v/a``         ``/Volumes/c/s/v/a``
``/Workspace/a``            ``/Workspace/a``             ``file:/Workspace/a``
``file:/a``                 ``/a``                       ``file:/a``
``/tmp/a``, ``/local_disk0``  ``/tmp/a``                 ``file:/tmp/a``
other absolute ``/a``       ``/dbfs/a``                  ``dbfs:/a`` (Spark reads DBFS)
``abfss://c@acct.../a``     none (cloud storage)         ``abfss://c@acct.../a``
relative ``a``              refused: Spark and Python resolve it differently
==========================  ===========================  ===============================

Locally, DBFS, Volumes and Workspace are folders under ``MLOPS_HOME`` (``dbfs/``,
``Volumes/``, ``Workspace/``); ``file:``, absolute and relative paths are plain local paths;
``abfss://`` has no local equivalent. Driver and Spark paths are the same folder. Any other
scheme is refused on both platforms.
"""
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Optional
from urllib.parse import unquote

from mlops.errors import ConfigError

DATABRICKS = "databricks"
LOCAL = "local"

KNOWN_KINDS = ("dbfs:/", "/dbfs/", "/Volumes/", "/Workspace/", "abfss://", "file:", "absolute", "relative")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# Absolute paths that are the driver's own disk on Databricks, not DBFS.
_DRIVER_DISK_ROOTS = ("/tmp", "/local_disk0")
_MOUNTS = ("Volumes", "Workspace")


@dataclass(frozen=True)
class Location:
    """One URI resolved for one platform: ``driver`` is None for cloud storage."""

    uri: str
    driver: Optional[Path]
    spark: str


def resolve(uri, platform: str, local_root: Callable[[str], Path]) -> Location:
    """Resolve ``uri`` for ``platform``; ``local_root(name)`` gives the local stand-in of a mount."""
    text = str(uri)
    kind, rest = _classify(text)
    if platform == DATABRICKS:
        return _on_databricks(text, kind, rest)
    if platform == LOCAL:
        return _locally(text, kind, rest, local_root)
    raise ConfigError(f"unknown platform {platform!r}; expected {DATABRICKS} or {LOCAL}")


def _classify(text: str) -> tuple[str, str]:
    """The URI kind and the path after its prefix (always starting with '/' for absolute kinds)."""
    if text.startswith("dbfs:"):
        return "dbfs", "/" + text[len("dbfs:"):].lstrip("/")
    if text == "/dbfs" or text.startswith("/dbfs/"):
        return "dbfs", "/" + text[len("/dbfs"):].lstrip("/")
    if text.startswith("abfss://"):
        return "abfss", text
    if text.startswith("file:"):
        rest = text[len("file:"):]
        if rest.startswith("//"):
            rest = rest[2:]
        return "file", unquote("/" + rest.lstrip("/"))
    scheme = _SCHEME.match(text)
    if scheme and len(scheme.group(1)) > 1:
        raise ConfigError(
            f"cannot use '{text}': the URI kind {scheme.group(1)}: is not supported; use one of "
            f"{', '.join(KNOWN_KINDS)}")
    if not text:
        raise ConfigError("an empty path is not a location; use one of " + ", ".join(KNOWN_KINDS))
    if text.startswith("/"):
        return "absolute", text
    return "relative", text


def _mount_of(path: str) -> Optional[str]:
    parts = PurePosixPath(path).parts
    return parts[1] if len(parts) > 1 and parts[1] in _MOUNTS else None


def _on_databricks(text: str, kind: str, rest: str) -> Location:
    if kind == "dbfs":
        if _mount_of(rest) == "Volumes":
            return Location(text, Path(rest), "dbfs:" + rest)
        return Location(text, Path("/dbfs" + rest.rstrip("/")) if rest != "/" else Path("/dbfs"),
                        "dbfs:" + rest)
    if kind == "abfss":
        return Location(text, None, text)
    if kind == "file":
        return Location(text, Path(rest), "file:" + rest)
    if kind == "relative":
        raise ConfigError(
            f"relative path '{text}' is ambiguous on Databricks: Spark reads it from DBFS while "
            "Python reads the working folder; use dbfs:/, /Volumes/ or abfss://")
    mount = _mount_of(rest)
    if mount == "Volumes":
        return Location(text, Path(rest), rest)
    if mount == "Workspace" or rest.startswith(tuple(root + "/" for root in _DRIVER_DISK_ROOTS)) \
            or rest in _DRIVER_DISK_ROOTS:
        return Location(text, Path(rest), "file:" + rest)
    return Location(text, Path("/dbfs" + rest), "dbfs:" + rest)


def _locally(text: str, kind: str, rest: str, local_root: Callable[[str], Path]) -> Location:
    if kind == "abfss":
        raise ConfigError(
            f"cannot map '{text}' to a local path: the local platform supports dbfs:/, /dbfs/, "
            "/Volumes/, /Workspace/, file: and plain paths, not abfss:")
    if kind == "dbfs" and _mount_of(rest) is None:
        driver = _inside(local_root("dbfs"), rest, text, "DBFS")
    elif kind in ("dbfs", "absolute") and _mount_of(rest):
        mount = _mount_of(rest)
        driver = _inside(local_root(mount), rest[len(mount) + 1:], text, "/" + mount)
    else:
        driver = Path(rest)
    return Location(text, driver, str(driver))


def _inside(root: Path, relative: str, original: str, shown_root: str) -> Path:
    root = root.resolve()
    local = (root / relative.lstrip("/")).resolve()
    if local != root and root not in local.parents:
        raise ConfigError(f"'{original}' points outside {shown_root}")
    return local
