"""FolderPublisher specifics and the choice between blob and folder publishing."""
import logging

import pytest

from mlops.local.azurite import ACCOUNT_KEY
from mlops.errors import ConfigError, PublishError
from mlops.publishing import BlobPublisher, FolderPublisher, make_publisher


def test_folder_layout_mirrors_the_blob_layout(tmp_path, make_files):
    publisher = FolderPublisher(tmp_path / "out", "results")
    result = publisher.publish(make_files("part-0.csv"), "scores/daily", "run-1", {})

    run_dir = tmp_path / "out" / "results" / "scores" / "daily" / "run-1"
    assert sorted(p.name for p in run_dir.iterdir()) == ["_manifest.json", "part-0.csv"]
    assert result.url == run_dir.as_uri() + "/"
    assert result.manifest_url == (run_dir / "_manifest.json").as_uri()


def test_source_file_vanishing_mid_publish_leaves_no_partial_files(tmp_path, make_files):
    publisher = FolderPublisher(tmp_path / "out", "results", max_concurrency=1)
    files = make_files("part-0.csv", "part-1.csv")

    def delete_second_source(name):
        if name == "part-1.csv":
            files[1][0].unlink()

    publisher.before_upload = delete_second_source
    with pytest.raises(PublishError, match="failed at file 'part-1.csv': FileNotFoundError"):
        publisher.publish(files, "scores", "run-1", {})

    run_dir = tmp_path / "out" / "results" / "scores" / "run-1"
    # No manifest, and no temporary copy of the failed file.
    assert sorted(p.name for p in run_dir.iterdir()) == ["part-0.csv"]


def test_check_access_fails_when_the_folder_is_a_file(tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    publisher = FolderPublisher(blocker, "results")
    with pytest.raises(PublishError) as caught:
        publisher.check_access()
    assert f"cannot access folder '{blocker / 'results'}'" in str(caught.value)


def test_corrupt_manifest_is_reported(tmp_path, make_files):
    publisher = FolderPublisher(tmp_path / "out", "results")
    publisher.publish(make_files("a.csv"), "scores", "run-1", {})
    manifest = tmp_path / "out" / "results" / "scores" / "run-1" / "_manifest.json"
    manifest.write_text("{truncated")
    with pytest.raises(PublishError, match="manifest '.*_manifest.json' is not valid JSON"):
        publisher.read_manifest("scores", "run-1")


def test_folder_publisher_rejects_bad_settings(tmp_path):
    with pytest.raises(ConfigError, match="container name 'Results' is invalid"):
        FolderPublisher(tmp_path, "Results")
    with pytest.raises(ConfigError, match="max_concurrency must be an integer >= 1, got 0"):
        FolderPublisher(tmp_path, "results", max_concurrency=0)


@pytest.mark.parametrize("connection_string", [None, "", "  "])
def test_make_publisher_without_connection_string_warns_and_uses_the_folder(
        tmp_path, caplog, connection_string):
    with caplog.at_level(logging.WARNING, logger="mlops.publishing"):
        publisher = make_publisher(connection_string, "results", tmp_path / "out")

    assert isinstance(publisher, FolderPublisher)
    assert publisher.root == (tmp_path / "out" / "results").resolve()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "mlops.publishing"]
    assert len(warnings) == 1
    assert "no blob storage connection string" in warnings[0].getMessage()
    assert str(publisher.root) in warnings[0].getMessage()


@pytest.mark.slow
def test_make_publisher_with_connection_string_uses_blob_storage_without_logging_the_key(
        azurite, tmp_path, caplog):
    with caplog.at_level(logging.DEBUG, logger="mlops.publishing"):
        publisher = make_publisher(azurite.connection_string, "results", tmp_path / "out")
    with publisher:
        assert isinstance(publisher, BlobPublisher)
        assert not (tmp_path / "out").exists()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert all(ACCOUNT_KEY not in r.getMessage() for r in caplog.records)
