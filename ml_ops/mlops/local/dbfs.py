"""``dbutils.fs`` over local files.

Paths map as the platform seam says (:mod:`mlops.platform.paths`): ``dbfs:/x`` and ``/dbfs/x``
are ``$MLOPS_HOME/dbfs/x``; ``file:/x`` and plain paths are local paths.
"""
import shutil
from dataclasses import dataclass

from mlops.platform import driver_path as to_local_path


@dataclass(frozen=True)
class FileInfo:
    path: str
    name: str
    size: int
    modificationTime: int


class LocalFs:
    """``dbutils.fs`` over local files; see ``to_local_path`` for the path mapping."""

    def ls(self, dir: str) -> list[FileInfo]:
        local = to_local_path(dir)
        if not local.exists():
            raise FileNotFoundError(f"File {dir} does not exist")
        entries = [local] if local.is_file() else sorted(local.iterdir())
        base = dir.rstrip("/")
        infos = []
        for entry in entries:
            suffix = "/" if entry.is_dir() else ""
            shown = base if entry == local else f"{base}/{entry.name}"
            stat = entry.stat()
            infos.append(FileInfo(path=shown + suffix, name=entry.name + suffix,
                                  size=0 if entry.is_dir() else stat.st_size,
                                  modificationTime=int(stat.st_mtime * 1000)))
        return infos

    def mkdirs(self, dir: str) -> bool:
        to_local_path(dir).mkdir(parents=True, exist_ok=True)
        return True

    def put(self, file: str, contents: str, overwrite: bool = False) -> bool:
        local = to_local_path(file)
        if local.exists() and not overwrite:
            raise FileExistsError(f"File {file} already exists; pass overwrite=True to replace it")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(contents, encoding="utf-8")
        return True

    def head(self, file: str, maxBytes: int = 65536) -> str:
        local = to_local_path(file)
        if not local.is_file():
            raise FileNotFoundError(f"File {file} does not exist or is a directory")
        with local.open("rb") as handle:
            return handle.read(maxBytes).decode("utf-8", errors="replace")

    def cp(self, from_: str, to: str, recurse: bool = False) -> bool:
        source, target = to_local_path(from_), to_local_path(to)
        if not source.exists():
            raise FileNotFoundError(f"File {from_} does not exist")
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            if not recurse:
                raise IsADirectoryError(f"{from_} is a directory; pass recurse=True to copy it")
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target / source.name if target.is_dir() else target)
        return True

    def mv(self, from_: str, to: str, recurse: bool = False) -> bool:
        source, target = to_local_path(from_), to_local_path(to)
        if not source.exists():
            raise FileNotFoundError(f"File {from_} does not exist")
        if source.is_dir() and not recurse:
            raise IsADirectoryError(f"{from_} is a directory; pass recurse=True to move it")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(target))
        return True

    def rm(self, dir: str, recurse: bool = False) -> bool:
        """Delete a file or directory; False when nothing was there, as on Databricks."""
        local = to_local_path(dir)
        if not local.exists():
            return False
        if local.is_dir():
            if any(local.iterdir()) and not recurse:
                raise IsADirectoryError(f"{dir} is a non-empty directory; pass recurse=True to delete it")
            shutil.rmtree(local)
        else:
            local.unlink()
        return True
