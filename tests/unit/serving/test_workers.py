"""``mlops serve --workers N``: processes on one port, splitting alike, each row logged exactly once."""
import concurrent.futures
import json
import subprocess
import sys

import pytest
from deltalake import DeltaTable

from mlops.cli import main

from .conftest import FEATURES, call
from .test_alias_switch_and_logging import (
    BODY, Address, _answers, readme_serve_command, readme_server_setup, stopped, wait_for)
from .test_traffic_split import set_challenger


@pytest.mark.slow
def test_two_workers_share_the_port_split_alike_and_log_every_answered_row_once(registry_home, tmp_path):
    home, (first, second, _) = registry_home
    set_challenger(second)
    port, environment = readme_server_setup(home)
    log = home / "tables" / "dev" / "taxi_fares" / "taxi_fares_predictions"
    before = DeltaTable(str(log)).to_pyarrow_table().num_rows if DeltaTable.is_deltatable(str(log)) else 0
    command = [*readme_serve_command(port), "--workers", "2", "--flush-seconds", "600", "--flush-rows", "7",
               "--challenger-percent", "30"]
    process = subprocess.Popen(command, env=environment, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    server = Address(port)
    try:
        wait_for(lambda: process.poll() is None and _answers(server), timeout=90)
        # Each worker loads its model on its own; the load starts once both answer on the port.
        seen = set()

        def both_workers_answered():
            seen.update(_health_pids(server))
            return len(seen) == 2

        wait_for(both_workers_answered, timeout=90)

        def arms_of(keys) -> dict:
            return {key: arm for key, arm in zip(keys, (_arm(server, key) for key in keys)) if arm}

        clients = [[f"trip-{client}-{number}" for number in range(15)] for client in range(24)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = {key: arm for arms in pool.map(arms_of, clients) for key, arm in arms.items()}
            # Asked again, on whichever worker takes it: the same arm.
            again = [list(answers)[start::8] for start in range(8)]
            retried = {key: arm for arms in pool.map(arms_of, again) for key, arm in arms.items()}
        stdout, stderr = stopped(process, timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert f"with 2 workers at http://127.0.0.1:{port}" in stdout and "stopped; 2 workers" in stdout
    assert len(answers) == 24 * 15 and process.pid not in seen
    assert retried == answers
    challenger_share = list(answers.values()).count("challenger") / len(answers)
    assert 0.2 < challenger_share < 0.4
    rows = DeltaTable(str(log)).to_pyarrow_table().to_pandas()
    assert len(rows) == before + 2 * len(answers), stderr[-3000:]
    assert rows["request_id"].is_unique
    assert (rows["arm"] == "challenger").sum() == 2 * list(answers.values()).count("challenger")
    assert set(zip(rows["arm"], rows["model_version"])) == {("champion", first), ("challenger", second)}
    assert list((log.parent / f"{log.name}.journal").glob("*.jsonl")) == []


def _arm(server, key: str) -> str | None:
    status, headers, _ = call(server, "/invocations", BODY, headers={"X-Request-Key": key})
    return headers["X-Model-Arm"] if status == 200 else None


_COMMIT_ONE_ROW_EACH = """
import datetime, json, sys
import numpy as np
from mlops.serving.request_log import LoggedRequest, RequestLog, new_request_ids
folder, names, commits = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
when = datetime.datetime(2016, 2, 1, 12, tzinfo=datetime.timezone.utc)
log = RequestLog(folder, names)
for number in range(1, commits + 1):
    log._commit([LoggedRequest("taxi_fares", "1", "Champion", when, new_request_ids(1),
                               np.ones((1, len(names))), np.ones(1), [None])], log.journal.app_id, number)
log.close()
print(log.written)
"""


def test_two_servers_committing_to_one_log_at_once_lose_no_row(tmp_path):
    folder, commits = tmp_path / "log", 100
    command = [sys.executable, "-c", _COMMIT_ONE_ROW_EACH, str(folder), json.dumps(FEATURES), str(commits)]
    writers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outcomes = [writer.communicate(timeout=300) for writer in writers]
    assert [(writer.returncode, stdout.strip()) for writer, (stdout, _) in zip(writers, outcomes)] == \
        [(0, str(commits))] * 2, [stderr[-2000:] for _, stderr in outcomes]
    assert DeltaTable(str(folder)).to_pyarrow_table().num_rows == 2 * commits


def _health_pids(server) -> set:
    """The process ids of the workers that answered 8 concurrent health checks."""
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return set(pool.map(lambda _: call(server, "/health")[2]["process_id"], range(8)))


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_a_worker_count_below_one_is_refused(workers, capsys):
    assert main(["serve", "--workers", workers]) == 1
    assert f"error: --workers must be 1 or more, got {workers}" in capsys.readouterr().err
