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
import re
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence
from urllib.parse import quote, urlsplit, urlunsplit

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobServiceClient, ContentSettings, ExponentialRetry

from mlops.errors import ConfigError, PublishError
from mlops.retry import call_with_retry
from mlops.secrets import redact_text, register_secret

logger = logging.getLogger(__name__)

MANIFEST_NAME = "_manifest.json"
RESERVED_MANIFEST_KEYS = ("run_id", "created_at", "prefix", "files", "total_rows")
_HASH_CHUNK_BYTES = 1024 * 1024
_MAX_SEGMENT_CHARS = 255
_MAX_BLOB_NAME_CHARS = 1024
# Short backoffs (about 1.75 s, 2.5 s, 3.6 s for three retries); the SDK default starts at
# 15 s. A connection that cannot be opened is retried only once, so a wrong or dead
# endpoint fails in about two seconds instead of after every retry.
_RETRY_INITIAL_BACKOFF_SECONDS = 0.25
_RETRY_INCREMENT_BASE = 1.5
_RETRY_JITTER_SECONDS = 0.25
_MAX_CONNECT_TIMEOUT_SECONDS = 5.0
_CONNECT_RETRIES = 1

_CONTAINER_CHARS = re.compile(r"[a-z0-9-]+")


def validate_container_name(name: str) -> str:
    """Return ``name`` if it is a valid Azure container name, else raise ConfigError naming the rule."""
    if not isinstance(name, str):
        raise ConfigError(f"container name must be a string, got {type(name).__name__}")
    if not 3 <= len(name) <= 63:
        raise ConfigError(f"container name '{name}' is invalid: it must be 3 to 63 characters long, "
                          f"got {len(name)}")
    if not _CONTAINER_CHARS.fullmatch(name):
        bad = sorted({c for c in name if not _CONTAINER_CHARS.fullmatch(c)})
        raise ConfigError(f"container name '{name}' is invalid: only lowercase letters, digits and hyphens "
                          f"are allowed, found {', '.join(repr(c) for c in bad)}")
    if name[0] == "-" or name[-1] == "-":
        raise ConfigError(f"container name '{name}' is invalid: it must start and end with a letter or digit")
    if "--" in name:
        raise ConfigError(f"container name '{name}' is invalid: it must not contain consecutive hyphens")
    return name


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a safe relative blob path like ``scores/daily``, else raise ConfigError."""
    if not isinstance(prefix, str) or not prefix:
        raise ConfigError(f"prefix {prefix!r} is invalid: it must be a non-empty string "
                          "such as 'scores/daily'")
    if "\\" in prefix:
        raise ConfigError(f"prefix '{prefix}' is invalid: it must not contain a backslash; use '/'")
    if prefix.startswith("/"):
        raise ConfigError(f"prefix '{prefix}' is invalid: it must not start with '/'")
    segments = prefix.split("/")
    if "" in segments:
        raise ConfigError(f"prefix '{prefix}' is invalid: it must not contain empty segments "
                          "('//' or a trailing '/')")
    if ".." in segments or "." in segments:
        raise ConfigError(f"prefix '{prefix}' is invalid: it must not contain '..' or '.' segments")
    for segment in segments:
        if len(segment) > _MAX_SEGMENT_CHARS:
            raise ConfigError(f"prefix '{prefix}' is invalid: segment '{segment[:20]}...' is {len(segment)} "
                              f"characters long, the limit is {_MAX_SEGMENT_CHARS}")
    return prefix


def _validate_segment(kind: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{kind} {value!r} is invalid: it must be a non-empty string")
    if "/" in value or "\\" in value:
        raise ConfigError(f"{kind} '{value}' is invalid: it must not contain '/' or '\\'")
    if value in (".", ".."):
        raise ConfigError(f"{kind} '{value}' is invalid: '.' and '..' are not allowed")
    if len(value) > _MAX_SEGMENT_CHARS:
        raise ConfigError(f"{kind} '{value[:20]}...' is invalid: it is {len(value)} characters long, "
                          f"the limit is {_MAX_SEGMENT_CHARS}")
    return value


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


def _md5_and_size(path: Path) -> tuple[str, int]:
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
            size += len(chunk)
    return base64.b64encode(digest.digest()).decode("ascii"), size


def _content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


class _Publisher:
    """The publish protocol shared by the blob and folder publishers; subclasses do the storage I/O."""

    max_concurrency: int

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
                manifest: dict, before_upload: Callable[[str], None] | None = None) -> PublishResult:
        """Publish ``files`` (pairs of local path and row count) as run ``run_id`` under ``prefix``.

        Old blobs of the same run are removed first (manifest first), the files are
        uploaded in parallel, and the manifest (the caller's ``manifest`` entries plus
        run id, time, prefix, files and total rows) is written only after all succeeded.
        ``before_upload(name)`` is called before each file's upload; an exception it
        raises is treated as that upload failing, which lets tests simulate a crash.
        Raises ConfigError for bad arguments and PublishError naming the failed file.
        """
        run_prefix = self._run_prefix(prefix, run_id)
        local_files = self._check_files(files, run_prefix)
        extra = self._check_manifest_entries(manifest)

        self._delete_run(run_prefix)
        published = self._upload_all(local_files, run_prefix, run_id, before_upload)
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
        _validate_segment("run_id", run_id)
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
            name = _validate_segment("file name", path.name)
            if name == MANIFEST_NAME:
                raise ConfigError(f"file '{path}' is named like the manifest '{MANIFEST_NAME}'; rename it")
            if name in seen:
                raise ConfigError(f"two files are named '{name}'; file names must be unique within a run")
            if not path.is_file():
                raise ConfigError(f"file to publish '{path}' does not exist or is not a regular file")
            if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
                raise ConfigError(f"row count of '{name}' must be a non-negative integer, got {rows!r}")
            if len(run_prefix + name) > _MAX_BLOB_NAME_CHARS:
                raise ConfigError(f"blob name '{run_prefix}{name}' is longer than {_MAX_BLOB_NAME_CHARS} "
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

    def _upload_all(self, local_files: list[_LocalFile], run_prefix: str, run_id: str,
                    before_upload: Callable[[str], None] | None) -> list[PublishedFile]:
        failed = threading.Event()

        def upload(local: _LocalFile) -> PublishedFile | None:
            # Once one upload failed, queued uploads must not start.
            if failed.is_set():
                return None
            try:
                if before_upload is not None:
                    before_upload(local.name)
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


def _parse_connection_string(connection_string: str) -> dict[str, str]:
    """Key/value pairs of a connection string; never echoes the string, which holds a key."""
    pairs = {}
    for part in connection_string.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError("blob connection string is malformed: expected 'Name=value' pairs separated "
                              "by ';' (its text is not shown because it holds credentials)")
        pairs[key.strip().lower()] = value.strip()
    return pairs


def _without_query(url: str) -> str:
    """The URL without its query string, which may hold a SAS token."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class BlobPublisher(_Publisher):
    """Publishes to one container of an Azure Storage account (or Azurite) given a connection string."""

    def __init__(self, connection_string: str, container: str, max_concurrency: int = 4,
                 timeout_seconds: float = 20, retries: int = 3):
        self.container = validate_container_name(container)
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be an integer >= 1, got {max_concurrency!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"retries must be an integer >= 0, got {retries!r}")
        if not timeout_seconds or timeout_seconds <= 0:
            raise ConfigError(f"timeout_seconds must be > 0, got {timeout_seconds!r}")
        if not isinstance(connection_string, str) or not connection_string.strip():
            raise ConfigError("blob connection string is empty")
        self.max_concurrency = max_concurrency
        fields = _parse_connection_string(connection_string)
        for key in ("accountkey", "sharedaccesssignature"):
            register_secret(fields.get(key))
        self._upload_attempts = retries + 1
        retry_policy = ExponentialRetry(
            initial_backoff=_RETRY_INITIAL_BACKOFF_SECONDS, increment_base=_RETRY_INCREMENT_BASE,
            retry_total=retries, retry_connect=min(retries, _CONNECT_RETRIES),
            random_jitter_range=_RETRY_JITTER_SECONDS)
        try:
            self._service = BlobServiceClient.from_connection_string(
                connection_string, retry_policy=retry_policy,
                connection_timeout=min(timeout_seconds, _MAX_CONNECT_TIMEOUT_SECONDS),
                read_timeout=timeout_seconds)
        except (ValueError, AzureError) as err:
            raise ConfigError(self._redact(
                f"blob connection string for container '{container}' is not usable: {err} "
                "(its text is not shown because it holds credentials)")) from err
        self.account = self._service.account_name or fields.get("accountname") or "unknown"
        self._container = self._service.get_container_client(self.container)

    def __repr__(self) -> str:
        return f"BlobPublisher(account={self.account!r}, container={self.container!r})"

    def close(self) -> None:
        self._service.close()

    def check_access(self) -> None:
        """Create the container if missing and list it, so a bad endpoint or key fails before any work."""
        with self._storage_errors("cannot access"):
            try:
                self._container.create_container()
                logger.info("created container '%s' in account '%s'", self.container, self.account)
            except ResourceExistsError:
                pass
            next(iter(self._container.list_blobs(results_per_page=1).by_page()), None)

    def list_run(self, prefix: str, run_id: str) -> list[tuple[str, int]]:
        """(blob name, size) of every blob of the run, sorted by name."""
        run_prefix = self._run_prefix(prefix, run_id)
        with self._storage_errors(f"cannot list run '{run_id}' in"):
            blobs = self._container.list_blobs(name_starts_with=run_prefix)
            return sorted((blob.name, blob.size) for blob in blobs)

    def read_manifest(self, prefix: str, run_id: str) -> dict | None:
        """The run's manifest, or None when the run has none (never published, or interrupted)."""
        name = self._run_prefix(prefix, run_id) + MANIFEST_NAME
        with self._storage_errors(f"cannot read manifest of run '{run_id}' in"):
            try:
                payload = self._container.download_blob(name).readall()
            except ResourceNotFoundError:
                return None
        try:
            return json.loads(payload)
        except ValueError as err:
            raise PublishError(f"manifest '{name}' in {self._where()} is not valid JSON: {err}") from err

    def _where(self) -> str:
        return f"account '{self.account}' container '{self.container}'"

    def _run_url(self, run_prefix: str) -> str:
        return f"{_without_query(self._container.url)}/{quote(run_prefix)}"

    def _delete_run(self, run_prefix: str) -> None:
        with self._storage_errors(f"cannot remove old blobs under '{run_prefix}' in"):
            # The old manifest goes first, so no reader sees it next to missing or replaced files.
            try:
                self._container.delete_blob(run_prefix + MANIFEST_NAME, delete_snapshots="include")
            except ResourceNotFoundError:
                pass
            names = [blob.name for blob in self._container.list_blobs(name_starts_with=run_prefix)]
            for name in names:
                try:
                    self._container.delete_blob(name, delete_snapshots="include")
                except ResourceNotFoundError:
                    pass
        if names:
            logger.info("removed %d old blobs of '%s' from %s", len(names), run_prefix, self._where())

    def _upload_file(self, path: Path, name: str) -> tuple[str, int]:
        md5, size = _md5_and_size(path)
        settings = ContentSettings(content_type=_content_type(name),
                                   content_md5=bytearray(base64.b64decode(md5)))

        def upload_once() -> None:
            with open(path, "rb") as stream:
                # The whole file is retried below, so the SDK must not retry inside the call too.
                self._container.upload_blob(name, stream, length=size, overwrite=True,
                                            content_settings=settings, max_concurrency=1, retry_total=0)

        call_with_retry(upload_once, attempts=self._upload_attempts)
        return md5, size

    def _write_manifest(self, name: str, payload: bytes) -> str:
        digest = hashlib.md5(payload, usedforsecurity=False).digest()
        settings = ContentSettings(content_type="application/json", content_md5=bytearray(digest))
        with self._storage_errors(f"cannot write manifest '{name}' to"):
            self._container.upload_blob(name, payload, overwrite=True, content_settings=settings)
        return _without_query(self._container.get_blob_client(name).url)

    @contextmanager
    def _storage_errors(self, action: str) -> Iterator[None]:
        """Turn an Azure error into one PublishError naming account and container, without secrets."""
        try:
            yield
        except AzureError as err:
            raise PublishError(self._redact(f"{action} {self._where()}: {self._describe(err)}")) \
                from err

    def _describe(self, error: BaseException) -> str:
        if not isinstance(error, AzureError):
            return f"{type(error).__name__}: {error}"
        text = str(error).strip()
        first_line = text.splitlines()[0] if text else type(error).__name__
        status = getattr(error, "status_code", None)
        code = getattr(error, "error_code", None)
        code = getattr(code, "value", code)
        if isinstance(error, ClientAuthenticationError) or status in (401, 403):
            return (f"authentication failed (HTTP {status}, {code}): {first_line} "
                    "Check the account key or SAS token.")
        if isinstance(error, ServiceRequestError):
            return f"endpoint {self._service.primary_hostname} is unreachable: {first_line}"
        if isinstance(error, ServiceResponseError):
            return f"endpoint {self._service.primary_hostname} gave no valid response: {first_line}"
        if status is not None:
            return f"HTTP {status} ({code}): {first_line}"
        return f"{type(error).__name__}: {first_line}"


class FolderPublisher(_Publisher):
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
                for chunk in iter(lambda: source.read(_HASH_CHUNK_BYTES), b""):
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


def make_publisher(connection_string: str | None, container: str,
                   folder: Path) -> BlobPublisher | FolderPublisher:
    """A BlobPublisher when a connection string is given, else a FolderPublisher (with a warning)."""
    if connection_string and connection_string.strip():
        publisher = BlobPublisher(connection_string, container)
        logger.info("results will be published to account '%s' container '%s'", publisher.account, container)
        return publisher
    publisher = FolderPublisher(folder, container)
    logger.warning("no blob storage connection string is configured: results go to the local folder %s "
                   "instead of Azure Blob Storage", publisher.root)
    return publisher
