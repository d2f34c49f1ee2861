"""Publish batch-scoring result files to Azure Blob Storage, or to a local folder.

Layout: ``<container>/<prefix>/<run_id>/<file name>`` plus ``<prefix>/<run_id>/_manifest.json``.
The manifest is written last and only after every file arrived, so a reader that
finds a manifest can trust every file it lists. Re-publishing a run id first
removes that run's old manifest, then its old files; other run ids are untouched.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import mimetypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from mlops.errors import ConfigError, PublishError
from mlops.observability.redaction import redact_text
from mlops.publishing.names import MAX_BLOB_NAME_CHARS, validate_prefix, validate_segment

logger = logging.getLogger(__name__)

MANIFEST_NAME = "_manifest.json"
RESERVED_MANIFEST_KEYS = ("run_id", "created_at", "prefix", "files", "total_rows")
HASH_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class PublishedFile:
    """One published file. ``md5`` is base64 of the MD5 digest, the form Azure shows as Content-MD5."""

    name: str
    rows: int
    size: int
    md5: str


@dataclass(frozen=True)
class PublishResult:
    """Where a run was published: the run's folder URL, the files, and the manifest URL."""

    url: str
    prefix: str
    files: list[PublishedFile]
    manifest_url: str


@dataclass(frozen=True)
class _LocalFile:
    path: Path
    name: str
    rows: int


def md5_and_size(path: Path) -> tuple[str, int]:
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
            size += len(chunk)
    return base64.b64encode(digest.digest()).decode("ascii"), size


def content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


class Publisher:
    """The publish protocol shared by the blob and folder publishers; subclasses do the storage I/O."""

    max_concurrency: int
    # Called with each file's name before its upload; what it raises counts as that upload
    # failing, which lets a check simulate a crash part-way.
    before_upload: Callable[[str], None] | None = None

    def check_access(self) -> None:
        raise NotImplementedError

    def list_run(self, prefix: str, run_id: str) -> list[tuple[str, int]]:
        raise NotImplementedError

    def read_manifest(self, prefix: str, run_id: str) -> dict | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; the publisher is not used afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def publish(self, files: Sequence[tuple[str | os.PathLike, int]], prefix: str, run_id: str,
                manifest: dict) -> PublishResult:
        """Publish ``files`` (pairs of local path and row count) as run ``run_id`` under ``prefix``.

        Old blobs of the same run are removed first (manifest first), the files are
        uploaded in parallel, and the manifest (the caller's ``manifest`` entries plus
        run id, time, prefix, files and total rows) is written only after all succeeded.
        Raises ConfigError for bad arguments and PublishError naming the failed file.
        """
        run_prefix = self._run_prefix(prefix, run_id)
        local_files = self._check_files(files, run_prefix)
        extra = self._check_manifest_entries(manifest)

        self._delete_run(run_prefix)
        published = self._upload_all(local_files, run_prefix, run_id)
        document = {
            "run_id": run_id,
            "created_at": datetime.now(timezone.utc).isoformat(),
            "prefix": prefix,
            "files": [asdict(f) for f in published],
            "total_rows": sum(f.rows for f in published),
            **extra,
        }
        payload = json.dumps(document, indent=2).encode("utf-8")
        manifest_url = self._write_manifest(run_prefix + MANIFEST_NAME, payload)
        logger.info("published run '%s': %d files, %d rows to %s", run_id, len(published),
                    document["total_rows"], self._where())
        return PublishResult(url=self._run_url(run_prefix), prefix=prefix, files=published,
                             manifest_url=manifest_url)

    @staticmethod
    def _run_prefix(prefix: str, run_id: str) -> str:
        validate_prefix(prefix)
        validate_segment("run_id", run_id)
        return f"{prefix}/{run_id}/"

    @staticmethod
    def _check_files(files, run_prefix: str) -> list[_LocalFile]:
        if not files:
            raise ConfigError("nothing to publish: the list of files is empty")
        checked, seen = [], set()
        for entry in files:
            try:
                local_path, rows = entry
            except (TypeError, ValueError) as err:
                raise ConfigError(f"each file must be a (path, rows) pair, got {entry!r}") from err
            path = Path(local_path)
            name = validate_segment("file name", path.name)
            if name == MANIFEST_NAME:
                raise ConfigError(f"file '{path}' is named like the manifest '{MANIFEST_NAME}'; rename it")
            if name in seen:
                raise ConfigError(f"two files are named '{name}'; file names must be unique within a run")
            if not path.is_file():
                raise ConfigError(f"file to publish '{path}' does not exist or is not a regular file")
            if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
                raise ConfigError(f"row count of '{name}' must be a non-negative integer, got {rows!r}")
            if len(run_prefix + name) > MAX_BLOB_NAME_CHARS:
                raise ConfigError(f"blob name '{run_prefix}{name}' is longer than {MAX_BLOB_NAME_CHARS} "
                                  "characters")
            seen.add(name)
            checked.append(_LocalFile(path, name, rows))
        return checked

    @staticmethod
    def _check_manifest_entries(manifest: dict) -> dict:
        if not isinstance(manifest, dict):
            raise ConfigError(f"manifest must be a dict, got {type(manifest).__name__}")
        clashes = sorted(set(manifest) & set(RESERVED_MANIFEST_KEYS))
        if clashes:
            raise ConfigError(f"manifest keys {clashes} are reserved; the publisher writes "
                              f"{list(RESERVED_MANIFEST_KEYS)} itself")
        try:
            json.dumps(manifest)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"manifest is not JSON-serialisable: {err}") from err
        return dict(manifest)

    def _upload_all(self, local_files: list[_LocalFile], run_prefix: str, run_id: str) -> list[PublishedFile]:
        failed = threading.Event()

        def upload(local: _LocalFile) -> PublishedFile | None:
            # Once one upload failed, queued uploads must not start.
            if failed.is_set():
                return None
            try:
                if self.before_upload is not None:
                    self.before_upload(local.name)
                md5, size = self._upload_file(local.path, run_prefix + local.name)
            except BaseException:
                failed.set()
                raise
            return PublishedFile(name=local.name, rows=local.rows, size=size, md5=md5)

        with ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="publish") as pool:
            futures = [pool.submit(upload, local) for local in local_files]
        first_failure = None
        for local, future in zip(local_files, futures):
            error = future.exception()
            if error is not None and first_failure is None:
                first_failure = (local, error)
        if first_failure is not None:
            local, error = first_failure
            raise PublishError(self._redact(
                f"publishing run '{run_id}' to {self._where()} failed at file '{local.name}': "
                f"{self._describe(error)}; the manifest was not written")) from error
        return [future.result() for future in futures]

    # Storage-specific operations.
    def _where(self) -> str:
        raise NotImplementedError

    def _run_url(self, run_prefix: str) -> str:
        raise NotImplementedError

    def _delete_run(self, run_prefix: str) -> None:
        raise NotImplementedError

    def _upload_file(self, path: Path, name: str) -> tuple[str, int]:
        raise NotImplementedError

    def _write_manifest(self, name: str, payload: bytes) -> str:
        raise NotImplementedError

    def _describe(self, error: BaseException) -> str:
        return f"{type(error).__name__}: {error}"

    def _redact(self, text: str) -> str:
        return redact_text(text)
