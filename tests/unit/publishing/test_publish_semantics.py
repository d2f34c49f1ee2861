"""Manifest-last publishing, run replacement and failure handling, on Azurite and on a folder."""
import base64
import hashlib
from datetime import datetime

import pytest

from mlops.errors import ConfigError, PublishError

MODEL_INFO = {"model_name": "taxi_fares", "model_version": "7", "parameters": {"num_leaves": 32}}


def md5_base64(payload: bytes) -> str:
    return base64.b64encode(hashlib.md5(payload).digest()).decode("ascii")


def test_publish_writes_every_file_and_a_manifest_describing_them(target, make_files):
    publisher, reader = target
    files = make_files("part-00000.csv", "part-00001.csv", "part-00002.csv")

    result = publisher.publish(files, "scores/daily", "run-1", MODEL_INFO)

    assert reader.names("scores/daily/run-1/") == [
        "scores/daily/run-1/_manifest.json", "scores/daily/run-1/part-00000.csv",
        "scores/daily/run-1/part-00001.csv", "scores/daily/run-1/part-00002.csv"]
    manifest = reader.manifest("scores/daily/run-1/")
    assert manifest["run_id"] == "run-1"
    assert manifest["prefix"] == "scores/daily"
    assert manifest["total_rows"] == 180
    assert manifest["model_name"] == "taxi_fares"
    assert manifest["parameters"] == {"num_leaves": 32}
    assert datetime.fromisoformat(manifest["created_at"]).tzinfo is not None
    for (path, rows), entry, published in zip(files, manifest["files"], result.files):
        local = path.read_bytes()
        remote = reader.read(f"scores/daily/run-1/{path.name}")
        assert remote == local
        assert entry == {"name": path.name, "rows": rows, "size": len(local), "md5": md5_base64(local)}
        assert (published.name, published.rows, published.size, published.md5) == tuple(entry.values())
    assert len(files[0][0].read_bytes()) > 2000, "test files should be a few KB"
    assert publisher.read_manifest("scores/daily", "run-1") == manifest
    assert publisher.list_run("scores/daily", "run-1") == [
        (name, len(reader.read(name))) for name in reader.names("scores/daily/run-1/")]
    assert result.prefix == "scores/daily"
    assert result.manifest_url.endswith("/scores/daily/run-1/_manifest.json")
    assert result.url.endswith("/scores/daily/run-1/")


def test_manifest_is_absent_while_files_upload(target, make_files):
    publisher, reader = target
    publisher.publish(make_files("a.csv", "old.csv"), "scores", "run-1", MODEL_INFO)
    assert reader.manifest("scores/run-1/") is not None
    seen_during_upload = []

    def observe(name):
        old_file = reader.read("scores/run-1/old.csv")
        seen_during_upload.append((name, reader.manifest("scores/run-1/"), old_file))

    publisher.before_upload = observe
    publisher.publish(make_files("a.csv", "b.csv", tag="v2-"), "scores", "run-1", MODEL_INFO)
    publisher.before_upload = None

    assert sorted(name for name, _, _ in seen_during_upload) == ["a.csv", "b.csv"]
    # Neither the old manifest nor the old run's files are visible once uploads start.
    assert all(manifest is None for _, manifest, _ in seen_during_upload)
    assert all(old_file is None for _, _, old_file in seen_during_upload)
    assert [f["name"] for f in reader.manifest("scores/run-1/")["files"]] == ["a.csv", "b.csv"]


def test_rerun_replaces_its_own_files_and_leaves_other_runs_alone(target, make_files):
    publisher, reader = target
    publisher.publish(make_files("a.csv", "b.csv"), "scores", "run-1", MODEL_INFO)
    # "run-10" starts with "run-1": replacing run-1 must not touch it.
    publisher.publish(make_files("c.csv"), "scores", "run-10", {"model_version": "1"})
    publisher.publish(make_files("c.csv"), "scores", "run-2", {"model_version": "2"})
    others_before = {run: {n: reader.read(n) for n in reader.names(f"scores/{run}/")}
                     for run in ("run-10", "run-2")}

    new_files = make_files("a.csv", tag="rerun-")
    publisher.publish(new_files, "scores", "run-1", {"model_version": "8"})

    assert reader.names("scores/run-1/") == ["scores/run-1/_manifest.json", "scores/run-1/a.csv"]
    assert reader.read("scores/run-1/a.csv") == new_files[0][0].read_bytes()
    manifest = reader.manifest("scores/run-1/")
    assert manifest["model_version"] == "8"
    assert [f["name"] for f in manifest["files"]] == ["a.csv"]
    for run, contents in others_before.items():
        assert {n: reader.read(n) for n in reader.names(f"scores/{run}/")} == contents


def test_failed_upload_leaves_no_manifest_and_a_rerun_completes(target, make_files):
    publisher, reader = target
    publisher.max_concurrency = 1  # one upload at a time, so "nothing after the failure" is checkable
    files = make_files("part-0.csv", "part-1.csv", "part-2.csv")
    publisher.publish(files, "scores", "run-1", MODEL_INFO)

    def crash_on_second_file(name):
        if name == "part-1.csv":
            raise OSError("simulated crash while writing part-1.csv")

    publisher.before_upload = crash_on_second_file
    with pytest.raises(PublishError) as caught:
        publisher.publish(files, "scores", "run-1", MODEL_INFO)
    publisher.before_upload = None

    message = str(caught.value)
    assert "run 'run-1'" in message
    assert "failed at file 'part-1.csv'" in message
    assert "simulated crash" in message
    assert "the manifest was not written" in message
    assert isinstance(caught.value.__cause__, OSError)
    assert reader.manifest("scores/run-1/") is None
    assert publisher.read_manifest("scores", "run-1") is None
    # The old manifest was removed first and the file after the failure was never started.
    assert reader.names("scores/run-1/") == ["scores/run-1/part-0.csv"]

    publisher.publish(files, "scores", "run-1", MODEL_INFO)
    assert [f["name"] for f in reader.manifest("scores/run-1/")["files"]] == [p.name for p, _ in files]


def test_parallel_failure_stops_queued_uploads(target, make_files):
    publisher, reader = target
    files = make_files(*[f"part-{i}.csv" for i in range(12)])
    started = []

    def crash_on_first_file(name):
        started.append(name)
        if name == "part-0.csv":
            raise RuntimeError("disk vanished")

    publisher.before_upload = crash_on_first_file
    with pytest.raises(PublishError, match="failed at file 'part-0.csv': RuntimeError: disk vanished"):
        publisher.publish(files, "scores", "run-1", MODEL_INFO)

    assert len(started) < len(files)
    assert reader.manifest("scores/run-1/") is None


@pytest.mark.parametrize("change, message", [
    (lambda files, tmp: files + [(tmp / "missing.csv", 1)], "does not exist or is not a regular file"),
    (lambda files, tmp: files + [(tmp / "other" / files[0][0].name, 1)], "two files are named 'a.csv'"),
    (lambda files, tmp: [(files[0][0], -1)], "row count of 'a.csv' must be a non-negative integer, got -1"),
    (lambda files, tmp: [(files[0][0], "60")], "must be a non-negative integer, got '60'"),
    (lambda files, tmp: [files[0][0]], "each file must be a (path, rows) pair"),
    (lambda files, tmp: [], "nothing to publish"),
])
def test_bad_files_are_rejected_before_the_published_run_is_touched(target, make_files, tmp_path,
                                                                    change, message):
    publisher, reader = target
    files = make_files("a.csv")
    publisher.publish(files, "scores", "run-1", MODEL_INFO)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.csv").write_text("x\n")

    with pytest.raises(ConfigError) as caught:
        publisher.publish(change(files, tmp_path), "scores", "run-1", MODEL_INFO)

    assert message in str(caught.value)
    assert reader.manifest("scores/run-1/") is not None


def test_file_named_like_the_manifest_is_rejected(target, tmp_path):
    publisher, _ = target
    path = tmp_path / "_manifest.json"
    path.write_text("{}")
    with pytest.raises(ConfigError, match="named like the manifest '_manifest.json'"):
        publisher.publish([(path, 0)], "scores", "run-1", {})


@pytest.mark.parametrize("manifest, message", [
    ({"run_id": "other"}, "manifest keys ['run_id'] are reserved"),
    ({"files": [], "total_rows": 3}, "manifest keys ['files', 'total_rows'] are reserved"),
    ({"model": object()}, "manifest is not JSON-serialisable"),
    (["model"], "manifest must be a dict, got list"),
])
def test_bad_manifest_entries_are_rejected(target, make_files, manifest, message):
    publisher, reader = target
    with pytest.raises(ConfigError) as caught:
        publisher.publish(make_files("a.csv"), "scores", "run-1", manifest)
    assert message in str(caught.value)
    assert reader.names("scores/run-1/") == []


@pytest.mark.parametrize("run_id, message", [
    ("", "run_id '' is invalid: it must be a non-empty string"),
    ("a/b", "run_id 'a/b' is invalid: it must not contain '/' or '\\'"),
    ("..", "run_id '..' is invalid: '.' and '..' are not allowed"),
])
def test_bad_run_id_is_rejected(target, make_files, run_id, message):
    publisher, _ = target
    with pytest.raises(ConfigError) as caught:
        publisher.publish(make_files("a.csv"), "scores", run_id, {})
    assert message in str(caught.value)


def test_bad_prefix_is_rejected_by_publish_and_readers(target, make_files):
    publisher, _ = target
    with pytest.raises(ConfigError, match="prefix '../x' is invalid"):
        publisher.publish(make_files("a.csv"), "../x", "run-1", {})
    with pytest.raises(ConfigError, match="prefix '/x' is invalid"):
        publisher.list_run("/x", "run-1")
    with pytest.raises(ConfigError, match="prefix 'x//y' is invalid"):
        publisher.read_manifest("x//y", "run-1")


def test_unknown_run_reads_as_empty(target):
    publisher, _ = target
    assert publisher.list_run("scores", "never-published") == []
    assert publisher.read_manifest("scores", "never-published") is None


def test_check_access_is_idempotent_and_keeps_published_runs(target, make_files):
    publisher, reader = target
    publisher.publish(make_files("a.csv"), "scores", "run-1", {})
    publisher.check_access()
    publisher.check_access()
    assert reader.names("scores/run-1/") == ["scores/run-1/_manifest.json", "scores/run-1/a.csv"]
