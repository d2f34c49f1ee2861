"""Zero-downtime alias switches under load, and requests logged into the Delta inference log."""
import concurrent.futures
import contextlib
import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from deltalake import DeltaTable

from mlops.observability.telemetry import Telemetry, TelemetrySettings
from mlops.serving import journal, online_store
from mlops.serving.request_log import LoggedRequest, RequestLog, new_request_ids
from support.appinsights import appinsights  # noqa: F401
from support.ports import free_port

from .conftest import FEATURES, MODEL, SNAPSHOT, call
from .test_server import RAW_TRIP

BODY = {"dataframe_records": [RAW_TRIP]}


def move_champion(version):
    mlflow.MlflowClient().set_registered_model_alias(MODEL, "Champion", version)


def wait_for(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@contextlib.contextmanager
def under_load(ask, threads: int = 4):
    """``ask(worker, number)`` in a loop on ``threads`` threads, from 0.3 s before the block to its end."""
    stop = threading.Event()

    def load(worker: int):
        number = 0
        while not stop.is_set():
            number += 1
            ask(worker, number)

    workers = [threading.Thread(target=load, args=(worker,)) for worker in range(threads)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.3)
        yield
    finally:
        stop.set()
        for worker in workers:
            worker.join()


def test_the_champion_moves_under_load_without_a_failed_request(serve, registry_home):
    _, (first, second, failed) = registry_home
    move_champion(first)
    server = serve(poll_seconds=0.05)
    answers = []

    def ask(*_):
        status, headers, _ = call(server, "/invocations", BODY)
        answers.append((time.monotonic(), status, headers.get("X-Model-Version")))

    try:
        with under_load(ask):
            move_champion(second)
            wait_for(lambda: server.app.slot.current.version == second)
            switched_at = time.monotonic()
            time.sleep(0.3)
            move_champion(failed)
            time.sleep(0.5)
    finally:
        move_champion(first)

    assert {status for _, status, _ in answers} == {200}
    assert {version for _, _, version in answers} == {first, second}
    # A request that started after the swap was complete never sees the old version.
    assert all(version == second for started, _, version in answers if started > switched_at + 0.05)
    assert server.app.slot.current.version == second
    health = call(server, "/health")[2]
    assert health["model_version"] == second
    assert f"version {failed} not loaded" in health["not_loaded"] and "model_validation_status=FAILED" in \
        health["not_loaded"]
    assert "mlops_serving_model_switches_total 1.0" in call(server, "/metrics")[2]


def test_requests_are_logged_in_micro_batches_with_their_versions(serve, registry_home, tmp_path):
    _, (first, _, _) = registry_home
    log = tmp_path / "taxi_fares_predictions"
    server = serve(log_table=log, flush_rows=5, flush_seconds=0.2)

    for _ in range(12):
        assert call(server, "/invocations", BODY)[0] == 200
    wait_for(lambda: server.app.request_log.written == 12)

    table = DeltaTable(str(log))
    rows = table.to_pyarrow_table().to_pandas()
    assert len(rows) == 12 and set(rows["model_version"]) == {first} and set(rows["job_run_id"]) == {"online"}
    assert rows["request_id"].is_unique and (rows["mean_fare_window_1h_pickup_zip"] == 14.5).all()
    assert len(table.history()) == server.app.request_log.commits <= 12
    assert server.app.request_log.dropped == 0


def test_a_refused_version_is_loaded_once_it_is_tagged_passed(serve, registry_home):
    _, (first, _, failed) = registry_home
    move_champion(first)
    server = serve(poll_seconds=0.05)
    client = mlflow.MlflowClient()
    try:
        move_champion(failed)
        wait_for(lambda: "not loaded" in (call(server, "/health")[2]["not_loaded"] or ""))
        client.set_model_version_tag(MODEL, failed, "model_validation_status", "PASSED")
        wait_for(lambda: server.app.slot.current.version == failed)
    finally:
        client.set_model_version_tag(MODEL, failed, "model_validation_status", "FAILED")
        move_champion(first)
    assert call(server, "/health")[2]["not_loaded"] is None


def test_rows_the_log_refuses_go_to_the_dead_letters_and_the_others_are_written(tmp_path):
    names = list(FEATURES)
    good = np.ones((3, len(names)))
    bad = np.ones((1, len(names)))
    bad[0, names.index("pickup_zip")] = 2.5  # the log keeps zips as integers
    log = RequestLog(tmp_path / "log", names, flush_rows=100, flush_seconds=60)
    when = datetime.datetime(2016, 2, 1, 12, tzinfo=datetime.timezone.utc)
    for matrix in (good, bad):
        log.add(LoggedRequest(MODEL, "1", "Champion", when, new_request_ids(len(matrix)), matrix,
                              np.full(len(matrix), 9.5), [when.replace(tzinfo=None)] * len(matrix)))
    log.close()

    assert DeltaTable(str(tmp_path / "log")).to_pyarrow_table().num_rows == 3
    assert (log.written, log.dead_lettered, log.dropped) == (3, 1, 0)
    [letter] = [json.loads(line) for line in log.dead_letter_file.read_text().splitlines()]
    assert letter["features"]["pickup_zip"] == 2.5 and letter["prediction"] == 9.5
    assert letter["reason"].startswith("ArrowInvalid: ")


def test_a_full_queue_counts_the_rows_not_logged(serve, tmp_path):
    server = serve(log_table=tmp_path / "log", queue_rows=2, flush_rows=1000, flush_seconds=60)
    statuses = [call(server, "/invocations", BODY)[0] for _ in range(3)]

    assert statuses == [200, 200, 200]
    assert server.app.request_log.dropped == 1
    assert "mlops_serving_log_rows_not_logged 1.0" in call(server, "/metrics")[2]


README = Path(__file__).resolve().parents[3] / "README.md"


def readme_serve_command(port: int) -> list:
    """The README's ``mlops serve`` command, as written, for MODEL on ``port``."""
    block = next(block for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
                 if "mlops serve" in block)
    lines = [line for line in block.replace("\\\n", " ").splitlines() if "mlops serve" in line]
    assert "export MLOPS_HOME=" in block, "the README sets the MLOPS_HOME its command reads"
    words = shlex.split(lines[0].split("#")[0])
    assert words[:2] == [".venv/bin/mlops", "serve"]
    words = [sys.executable, "-m", "mlops", *words[1:]]
    words[words.index("--model") + 1] = MODEL
    words[words.index("--port") + 1] = str(port)
    return words


def readme_server_setup(home: Path) -> tuple[int, dict]:
    """A free port, a snapshot where the README's command reads it, and the command's environment."""
    online_store.publish(home / "dbfs" / "mlops" / "taxi_fares" / "online_store", SNAPSHOT)
    environment = {name: value for name, value in os.environ.items() if not name.startswith("MLFLOW_")}
    environment["MLOPS_HOME"] = str(home)
    return free_port(), environment


class Address:
    """What :func:`call` needs of a server started in another process."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"


def readme_python_example() -> str:
    return next(block for block in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
                if "ScoringServerClient" in block)


@pytest.mark.slow
def test_the_readme_command_serves_from_another_folder_and_sigterm_flushes_the_queue(registry_home, tmp_path):
    home, _ = registry_home
    port, environment = readme_server_setup(home)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = [*readme_serve_command(port), "--flush-seconds", "600", "--flush-rows", "1000"]
    process = subprocess.Popen(command, env=environment, cwd=elsewhere, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        server = Address(port)
        wait_for(lambda: process.poll() is None and _answers(server), timeout=60)
        for _ in range(4):
            assert call(server, "/invocations", BODY)[0] == 200
        # The README's Python example, as written, against this server: one more logged request.
        *statements, last = readme_python_example().replace("5050", str(port)).strip().splitlines()
        namespace = {}
        exec("\n".join(statements), namespace)
        assert len(eval(last, namespace)) == 1
        stdout, stderr = stopped(process, timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert "stopped; 5 request rows logged, 0 not logged" in stdout
    log = home / "tables" / "dev" / "taxi_fares" / "taxi_fares_predictions"
    assert DeltaTable(str(log)).to_pyarrow_table().num_rows == 5
    assert sorted(path.name for path in elsewhere.iterdir()) == []
    assert "alembic" not in stderr

    missing = subprocess.run([*command[:4], "--model", "no_such_model", *command[6:]], env=environment,
                             cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1
    assert "error: model 'no_such_model' is not registered; train and promote one" in missing.stderr


@pytest.mark.slow
def test_a_server_killed_with_sigkill_loses_and_duplicates_no_logged_row(registry_home, tmp_path):
    home, _ = registry_home
    port, environment = readme_server_setup(home)
    command = [*readme_serve_command(port), "--flush-seconds", "600", "--flush-rows", "3"]
    server = Address(port)

    def started():
        process = subprocess.Popen(command, env=environment, cwd=tmp_path, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        wait_for(lambda: process.poll() is None and _answers(server), timeout=60)
        return process

    log = home / "tables" / "dev" / "taxi_fares" / "taxi_fares_predictions"

    def rows() -> int:
        return DeltaTable(str(log)).to_pyarrow_table().num_rows if DeltaTable.is_deltatable(str(log)) else 0

    def journaled() -> list:
        return [entry for path in (log.parent / f"{log.name}.journal").glob("*.jsonl")
                for entry in journal.entries(path, LoggedRequest)]

    before = rows()
    killed = started()
    try:
        # Three rows fill a commit; the next two wait in the queue (and the journal) when the kill comes.
        answered = sum(call(server, "/invocations", BODY)[0] == 200 for _ in range(5))
        wait_for(lambda: rows() == before + 3, timeout=30)
        wait_for(lambda: len(journaled()) == 2, timeout=30)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        if killed.poll() is None:
            killed.kill()
    assert answered == 5 and rows() == before + 3

    # Under load: four clients for three seconds, then SIGKILL mid-stream; the restart recovers the rest.
    loaded = started()
    wait_for(lambda: rows() == before + 5, timeout=30)
    deadline = time.monotonic() + 3

    def client():
        return sum(call(server, "/invocations", BODY)[0] == 200 for _ in iter(
            lambda: time.monotonic() < deadline, False))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        load = [pool.submit(client) for _ in range(4)]
        under_load = sum(future.result() for future in load)
    loaded.send_signal(signal.SIGKILL)
    loaded.wait(timeout=30)
    committed_before_recovery = rows() - before - 5
    restarted = started()
    restarted.send_signal(signal.SIGTERM)
    stdout, stderr = restarted.communicate(timeout=60)
    assert restarted.returncode == 0, stderr[-2000:]
    request_ids = DeltaTable(str(log)).to_pyarrow_table().column("request_id").to_pylist()
    lost = before + 5 + under_load - len(request_ids)
    print(f"SIGKILL under load: {under_load} rows answered in 3 s, {committed_before_recovery} committed "
          f"before the kill, {lost} lost ({lost / under_load:.1%}); the journal writes every "
          f"{journal.WRITE_SECONDS * 1000:.0f} ms")
    # What a kill may lose is what was answered since the journal's last write: well under 0.5 s of it.
    assert under_load > 0 and 0 <= lost <= under_load / 3 * 0.5
    assert len(set(request_ids)) == len(request_ids)
    assert list((log.parent / f"{log.name}.journal").iterdir()) == []


def test_a_dead_server_s_journal_is_committed_exactly_once(tmp_path):
    names = list(FEATURES)
    when = datetime.datetime(2016, 2, 1, 12, tzinfo=datetime.timezone.utc)
    requests = [LoggedRequest(MODEL, "1", "Champion", when, new_request_ids(2), np.ones((2, len(names))),
                              np.full(2, 9.5), [when.replace(tzinfo=None)] * 2) for _ in range(4)]
    folder = tmp_path / "log"
    dead = journal.Journal(tmp_path / "log.journal", write_seconds=None)
    for request in requests:
        dead.append(request)
    dead.write_waiting()
    # Its server committed the first two requests and died before emptying its journal.
    other = RequestLog(folder, names)
    other._commit(requests[:2], dead.app_id, 2)
    other.close()
    # What the kernel does when the server dies: its file and its lock are let go.
    os.close(dead._handle)
    dead._alive.release()

    restarted = RequestLog(folder, names)
    restarted.close()
    request_ids = DeltaTable(str(folder)).to_pyarrow_table().column("request_id").to_pylist()
    assert restarted.recovered == 4
    assert sorted(request_ids) == sorted(text for request in requests for _, text in request.ids)
    assert not dead.path.exists() and not dead.path.with_suffix(".lock").exists()


def test_a_log_other_servers_committed_to_many_times_meanwhile_still_takes_this_one_s_rows(tmp_path):
    names = list(FEATURES)
    when = datetime.datetime(2016, 2, 1, 12, tzinfo=datetime.timezone.utc)

    def request():
        return LoggedRequest(MODEL, "1", "Champion", when, new_request_ids(1), np.ones((1, len(names))),
                             np.ones(1), [None])
    folder = tmp_path / "log"
    this = RequestLog(folder, names)
    # The first commit creates the table; the second is through the table it then opened.
    for number in (1, 2):
        this._commit([request()], this.journal.app_id, number)
    other = RequestLog(folder, names)
    # More commits than delta-rs retries a stale commit over.
    for number in range(1, 21):
        other._commit([request()], other.journal.app_id, number)
    this._commit([request()], this.journal.app_id, 3)
    this.close()
    other.close()
    assert (this.written, other.written) == (3, 20)
    table = DeltaTable(str(folder))
    assert table.to_pyarrow_table().num_rows == 23 and table.transaction_version(this.journal.app_id) == 3


def test_the_journal_reads_back_what_it_holds_and_nothing_it_emptied(tmp_path):
    names = list(FEATURES)
    when = datetime.datetime(2016, 2, 1, 12, tzinfo=datetime.timezone.utc)
    wide = np.arange(4 * len(names), dtype=float).reshape(len(names), 4).T  # not C-contiguous
    wide[1, 2] = np.nan
    held = LoggedRequest(MODEL, "2", "Challenger", when, new_request_ids(4), wide, np.arange(4.0),
                         [when.replace(tzinfo=None), None, None, None], arm="challenger")
    long_ago = LoggedRequest(MODEL, "1", "Champion", when, new_request_ids(40), np.ones((40, len(names))),
                             np.ones(40), [None] * 40)
    kept = journal.Journal(tmp_path / "log.journal", write_seconds=None)
    for _ in range(3):
        kept.append(long_ago)
    kept.write_waiting()
    kept.mark_committed(3)
    kept.append(held)
    kept.write_waiting()
    # Read as recovery reads it: the emptied entries, longer and still in the file, are not read.
    (seq, back), = journal.entries(kept.path, LoggedRequest)
    assert seq == 4 and back.ids == held.ids and back.arm == "challenger" and back.pickups == held.pickups
    assert np.array_equal(back.matrix, wide, equal_nan=True) and np.isnan(back.matrix[1, 2])
    assert back.scored_at == when and back.model_version == "2"
    # Committed before its write came: it is never written.
    kept.append(long_ago)
    kept.mark_committed(5)
    kept.write_waiting()
    assert journal.entries(kept.path, LoggedRequest) == []
    kept.mark_committed(4)
    kept.close()
    assert not kept.path.exists()


def stopped(process, timeout: float) -> tuple[str, str]:
    """(stdout, stderr) of a server stopped with SIGTERM, which must exit 0."""
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-2000:]
    return stdout, stderr


def _answers(server) -> bool:
    try:
        return call(server, "/ping")[0] == 200
    except OSError:
        return False


def test_requests_and_switches_reach_application_insights(serve, registry_home, appinsights):  # noqa: F811
    _, (first, second, _) = registry_home
    move_champion(first)
    telemetry = Telemetry.start(TelemetrySettings(connection_string=appinsights.connection_string,
                                                  role_name=f"serving/{MODEL}"))
    try:
        server = serve(telemetry=telemetry, poll_seconds=0.05)
        for _ in range(3):
            assert call(server, "/invocations", BODY)[0] == 200
        assert call(server, "/invocations", raw=b"{", method="POST")[0] == 400
        move_champion(second)
        wait_for(lambda: server.app.slot.current.version == second)
    finally:
        move_champion(first)
        telemetry.close()

    requests = [item["data"]["baseData"] for item in appinsights.items("requests")
                if item["data"]["baseData"].get("url") == "/invocations"]
    assert sorted(request["responseCode"] for request in requests) == ["200", "200", "200", "400"]
    assert all(request["properties"]["model_version"] == first for request in requests)
    assert {item["sampleRate"] for item in appinsights.items("requests")
            if item["data"]["baseData"].get("url") == "/invocations"} == {100.0}
    [switch] = [item["data"]["baseData"] for item in appinsights.items("customEvents")
                if item["data"]["baseData"]["name"] == "serving.model_switch"]
    assert (switch["properties"]["from_version"], switch["properties"]["to_version"]) == (first, second)
