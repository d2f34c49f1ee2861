"""Publishing result files: to Azure Blob Storage, or to a local folder; the manifest last."""
from __future__ import annotations

import logging
from pathlib import Path

from mlops.publishing.blob import BlobPublisher
from mlops.publishing.folder import FolderPublisher
from mlops.publishing.names import validate_container_name, validate_prefix
from mlops.publishing.publisher import MANIFEST_NAME, PublishResult

logger = logging.getLogger(__name__)

__all__ = ["MANIFEST_NAME", "BlobPublisher", "FolderPublisher", "PublishResult", "make_publisher",
           "validate_container_name", "validate_prefix"]


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
