"""Publishers under test, one per storage kind, and an independent reader for each."""
import itertools
import json
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from mlops.publishing import BlobPublisher, FolderPublisher
from support.azurite import azurite  # noqa: F401

_container_numbers = itertools.count()


@pytest.fixture
def container(request):
    """A container name unique to the test, so tests never see each other's blobs."""
    return f"test-{next(_container_numbers)}-{abs(hash(request.node.nodeid)) % 10**8}"


@pytest.fixture
def storage(azurite):  # noqa: F811
    """A BlobServiceClient of our own, to check what the publisher wrote without trusting it."""
    with BlobServiceClient.from_connection_string(azurite.connection_string) as client:
        yield client


class BlobReader:
    """Reads a container through a separate client."""

    def __init__(self, storage, container):
        self._container = storage.get_container_client(container)

    def names(self, run_prefix):
        return sorted(blob.name for blob in self._container.list_blobs(name_starts_with=run_prefix))

    def read(self, name):
        blob = self._container.get_blob_client(name)
        return blob.download_blob().readall() if blob.exists() else None

    def manifest(self, run_prefix):
        payload = self.read(run_prefix + "_manifest.json")
        return None if payload is None else json.loads(payload)


class FolderReader:
    """Reads a FolderPublisher's container folder straight from disk."""

    def __init__(self, root: Path):
        self._root = root

    def names(self, run_prefix):
        run_dir = self._root / run_prefix
        if not run_dir.exists():
            return []
        return sorted(p.relative_to(self._root).as_posix() for p in run_dir.rglob("*") if p.is_file())

    def read(self, name):
        path = self._root / name
        return path.read_bytes() if path.exists() else None

    def manifest(self, run_prefix):
        payload = self.read(run_prefix + "_manifest.json")
        return None if payload is None else json.loads(payload)


@pytest.fixture(params=[pytest.param("blob", marks=pytest.mark.slow), "folder"])
def target(request, container, tmp_path):
    """(publisher, reader) for Azurite and for a local folder; both must behave the same."""
    if request.param == "blob":
        server = request.getfixturevalue("azurite")
        storage = request.getfixturevalue("storage")
        publisher = BlobPublisher(server.connection_string, container, max_concurrency=3)
        reader = BlobReader(storage, container)
    else:
        publisher = FolderPublisher(tmp_path / "published", container, max_concurrency=3)
        reader = FolderReader(tmp_path / "published" / container)
    with publisher:
        publisher.check_access()
        yield publisher, reader


@pytest.fixture
def make_files(tmp_path):
    """Write small CSV files with distinct content; returns [(path, rows)]."""
    counter = itertools.count()

    def make(*names, rows=60, tag=""):
        folder = tmp_path / f"local-{next(counter)}"
        folder.mkdir()
        files = []
        for index, name in enumerate(names):
            lines = ["trip_id,fare_prediction"]
            lines += [f"{tag}{index}-{row:05d},{(row * 1.37 + index) % 60:.2f},{'pickup zone ' * 4}"
                      for row in range(rows)]
            path = folder / name
            path.write_text("\n".join(lines) + "\n")
            files.append((path, rows))
        return files

    return make
