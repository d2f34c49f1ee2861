"""Publishing to one container of an Azure Storage account, or of Azurite."""
from __future__ import annotations

import base64
import hashlib
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
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
from mlops.observability.redaction import parse_connection_string, register_secret
from mlops.publishing.names import validate_container_name
from mlops.publishing.publisher import MANIFEST_NAME, Publisher, content_type, md5_and_size

logger = logging.getLogger(__name__)

# azure-core's retry policy retries throttling, 5xx and dropped connections, rewinding a file
# upload's stream. Short backoffs (about 1.75 s, 2.5 s, 3.6 s for three retries); the SDK
# default starts at 15 s. A connection that cannot be opened is retried only once, so a wrong
# or dead endpoint fails in about two seconds instead of after every retry.
_RETRY_INITIAL_BACKOFF_SECONDS = 0.25
_RETRY_INCREMENT_BASE = 1.5
_RETRY_JITTER_SECONDS = 0.25
_MAX_CONNECT_TIMEOUT_SECONDS = 5.0
_CONNECT_RETRIES = 1


def _without_query(url: str) -> str:
    """The URL without its query string, which may hold a SAS token."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class BlobPublisher(Publisher):
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
        fields = parse_connection_string(connection_string, "blob connection string")
        for key in ("accountkey", "sharedaccesssignature"):
            register_secret(fields.get(key))
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
        md5, size = md5_and_size(path)
        settings = ContentSettings(content_type=content_type(name),
                                   content_md5=bytearray(base64.b64decode(md5)))

        with open(path, "rb") as stream:
            self._container.upload_blob(name, stream, length=size, overwrite=True,
                                        content_settings=settings, max_concurrency=1)
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
