"""Publishing to a local folder, with the same layout and semantics as a blob container."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from mlops.errors import ConfigError, PublishError
from mlops.publishing.names import validate_container_name
from mlops.publishing.publisher import HASH_CHUNK_BYTES, MANIFEST_NAME, Publisher


class FolderPublisher(Publisher):
    """Publishes to ``folder/<container>/...`` on the local disk, with the same layout and semantics."""

    def __init__(self, folder: str | os.PathLike, container: str, max_concurrency: int = 4):
        self.container = validate_container_name(container)
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be an integer >= 1, got {max_concurrency!r}")
        self.max_concurrency = max_concurrency
        self.folder = Path(folder).resolve()
        self.root = self.folder / self.container

    def __repr__(self) -> str:
        return f"FolderPublisher(root={str(self.root)!r})"

    def check_access(self) -> None:
        """Create the container folder if missing and check it can be listed and written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            os.listdir(self.root)
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as err:
            raise PublishError(f"cannot access {self._where()}: {type(err).__name__}: {err}") from err

    def list_run(self, prefix: str, run_id: str) -> list[tuple[str, int]]:
        """(name relative to the container folder, size) of every file of the run, sorted by name."""
        run_dir = self.root / self._run_prefix(prefix, run_id)
        if not run_dir.is_dir():
            return []
        return sorted((path.relative_to(self.root).as_posix(), path.stat().st_size)
                      for path in run_dir.rglob("*") if path.is_file())

    def read_manifest(self, prefix: str, run_id: str) -> dict | None:
        """The run's manifest, or None when the run has none."""
        path = self.root / self._run_prefix(prefix, run_id) / MANIFEST_NAME
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as err:
            raise PublishError(f"manifest '{path}' is not valid JSON: {err}") from err

    def _where(self) -> str:
        return f"folder '{self.root}'"

    def _run_url(self, run_prefix: str) -> str:
        return (self.root / run_prefix).as_uri() + "/"

    def _delete_run(self, run_prefix: str) -> None:
        run_dir = self.root / run_prefix
        try:
            # The old manifest goes first, so no reader sees it next to missing or replaced files.
            (run_dir / MANIFEST_NAME).unlink(missing_ok=True)
            if run_dir.exists():
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True)
        except OSError as err:
            raise PublishError(f"cannot replace old files of '{run_prefix}' in {self._where()}: "
                               f"{type(err).__name__}: {err}") from err

    def _upload_file(self, path: Path, name: str) -> tuple[str, int]:
        target = self.root / name
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with open(path, "rb") as source, os.fdopen(handle, "wb") as sink:
                for chunk in iter(lambda: source.read(HASH_CHUNK_BYTES), b""):
                    digest.update(chunk)
                    sink.write(chunk)
                    size += len(chunk)
            os.replace(temp_name, target)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        return base64.b64encode(digest.digest()).decode("ascii"), size

    def _write_manifest(self, name: str, payload: bytes) -> str:
        target = self.root / name
        temp = target.with_name(f".{target.name}.tmp")
        try:
            temp.write_bytes(payload)
            os.replace(temp, target)
        except OSError as err:
            temp.unlink(missing_ok=True)
            raise PublishError(f"cannot write manifest '{target}': {type(err).__name__}: {err}") from err
        return target.as_uri()
