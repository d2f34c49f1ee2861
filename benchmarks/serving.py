"""Serving benchmark: ``mlops serve`` (S, raw trips, feature lookup on) against ``mlflow models serve`` (F).

``python -m benchmarks.serving`` from the repository root (``make bench`` runs it last). One
model (the scoring benchmark's 100 trees) is registered in a temporary MLflow store and served
by both, side by side in one run, each server in its own process on 127.0.0.1. The MLflow
server cannot look features up, so it gets the precomputed feature rows of the same trips; ours
gets the raw trips and looks the window features up in an online snapshot built from them.
The load comes from this process: keep-alive connections on one asyncio loop.

Measured: single-row requests at concurrency 1, 8 and 32 (throughput, p50 and p99 latency);
1,000-row batches (rows per second); our server at a fixed 100 requests per second (p99);
our server with request logging on against off, at concurrency 8 (fresh servers in turn, the
median ratio of five rounds: one round on this shared machine varies by 15%); and our server
with two worker processes at concurrency 32.

Environment: BENCH_SERVING_SECONDS (default 8), the length of each closed-loop measurement.
"""
import asyncio
import datetime
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common

FEATURE_ROWS = 1_000_000
CONCURRENCY = (1, 8, 32)
BATCH_ROWS = 1_000
FIXED_RATE = 100
TRIP_SAMPLE = 2_000
WORKERS = 2
LOGGING_ROUNDS = 5


def trips_and_snapshot(spark):
    """Trips picked up in one 15-minute slot (raw fields and feature rows) and the snapshot they need."""
    from pyspark.sql import functions as F
    from taxi_fares import features

    frame = spark.read.parquet(str(common.features_path(FEATURE_ROWS)))
    slot = frame.select(F.max(features.PICKUP)).first()[0].replace(minute=0, second=0, microsecond=0) \
        - datetime.timedelta(hours=6)
    rows = (frame.where((F.col(features.PICKUP) >= F.lit(slot))
                        & (F.col(features.PICKUP) < F.lit(slot + datetime.timedelta(minutes=15))))
            .limit(TRIP_SAMPLE).toPandas())
    names = list(features.FEATURE_COLUMNS)
    snapshot = {"as_of": slot.isoformat(), "pickup_zip": {}, "dropoff_zip": {}}
    for row in rows.itertuples(index=False):
        row = row._asdict()
        mean = row[features.MEAN_FARE_1H_PICKUP_ZIP]
        snapshot["pickup_zip"][str(row["pickup_zip"])] = {
            "window_end": slot.isoformat(),
            features.COUNT_1H_PICKUP_ZIP: int(row[features.COUNT_1H_PICKUP_ZIP]),
            features.MEAN_FARE_1H_PICKUP_ZIP: None if mean != mean else float(mean)}
        snapshot["dropoff_zip"][str(row["dropoff_zip"])] = {
            "window_end": slot.isoformat(),
            features.COUNT_30M_DROPOFF_ZIP: int(row[features.COUNT_30M_DROPOFF_ZIP])}
    raw = [{"tpep_pickup_datetime": row[features.PICKUP].isoformat(),
            "tpep_dropoff_datetime": row[features.DROPOFF].isoformat(), "trip_distance": row["trip_distance"],
            "pickup_zip": int(row["pickup_zip"]), "dropoff_zip": int(row["dropoff_zip"])}
           for _, row in rows.iterrows()]
    feature_rows = [{name: (None if value != value else float(value)) for name, value in zip(names, values)}
                    for values in rows[names].itertuples(index=False)]
    return raw, feature_rows, snapshot


def batch_of(records: list) -> list:
    """BATCH_ROWS records: the slot's trips, repeated as needed (a slot holds a few hundred)."""
    return [records[index % len(records)] for index in range(BATCH_ROWS)]


def body(records: list) -> bytes:
    return json.dumps({"dataframe_records": records}).encode()


class Load:
    """Clients on one asyncio loop, each on its own keep-alive connection.

    One event loop drives every client, so the load costs a few microseconds a request and its
    clients never wait on each other for the interpreter: at concurrency 32 a thread per client
    measured the client's own lock hand-offs, not the server.
    """

    def __init__(self, port: int, bodies: list[bytes]):
        self.port = port
        self.requests = [b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                         for body in bodies]

    async def _exchange(self, reader, writer, index: int) -> bool:
        """Send request ``index``, read its answer whole; True when it was a 200."""
        writer.write(self.requests[index % len(self.requests)])
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        return head[9:12] == b"200"

    def _run(self, clients: int, client) -> tuple[list, float, int]:
        latencies, failures = [], [0]

        async def all_clients():
            connections = [await asyncio.open_connection("127.0.0.1", self.port) for _ in range(clients)]
            try:
                await asyncio.gather(*(client(offset, *connection, latencies, failures)
                                       for offset, connection in enumerate(connections)))
            finally:
                for _, writer in connections:
                    writer.close()

        began, loop = time.monotonic(), new_loop()
        try:
            loop.run_until_complete(all_clients())
        finally:
            loop.close()
        return latencies, time.monotonic() - began, failures[0]

    def closed_loop(self, clients: int, seconds: float) -> dict:
        stop = time.monotonic() + seconds

        async def client(offset, reader, writer, latencies, failures):
            index = offset
            while time.monotonic() < stop:
                started = time.perf_counter()
                answered = await self._exchange(reader, writer, index)
                latencies.append(time.perf_counter() - started)
                failures[0] += not answered
                index += clients

        return summary(*self._run(clients, client))

    def fixed_rate(self, rate: int, seconds: float, clients: int = 8) -> dict:
        """Requests sent on a fixed schedule (open loop): latency counts from the scheduled time."""
        began = time.perf_counter() + 0.1
        schedule = [began + index / rate for index in range(int(rate * seconds))]
        cursor = [0]

        async def client(offset, reader, writer, latencies, failures):
            while cursor[0] < len(schedule):
                index, cursor[0] = cursor[0], cursor[0] + 1
                delay = schedule[index] - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                answered = await self._exchange(reader, writer, index)
                latencies.append(time.perf_counter() - schedule[index])
                failures[0] += not answered

        return summary(*self._run(clients, client))


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when installed (the server's own), asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def summary(latencies: list, seconds: float, failures: int) -> dict:
    ordered = sorted(latencies)
    return {"requests": len(ordered), "failures": failures, "per_second": len(ordered) / seconds,
            "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def start(command: list, port: int, environment: dict) -> subprocess.Popen:
    process = subprocess.Popen(command, env=environment, cwd=environment["MLOPS_HOME"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[:4]} exited: {process.stderr.read()[-3000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/ping")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"{command[:4]} did not answer /ping in 180 s")


def stop(process: subprocess.Popen):
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def measure_server(command, port, environment, single, batches, seconds, extra=None) -> dict:
    process = start(command, port, environment)
    try:
        load = Load(port, single)
        load.closed_loop(4, 2)  # warm-up
        results = {f"c{clients}": load.closed_loop(clients, seconds) for clients in CONCURRENCY}
        batch = Load(port, batches).closed_loop(1, seconds)
        results["batch_rows_per_second"] = batch["per_second"] * BATCH_ROWS
        if extra:
            results.update(extra(load))
        return results
    finally:
        stop(process)


def measure_one_load(command, port, environment, single, clients, seconds) -> dict:
    """One closed-loop measurement of a server started for it, after a warm-up."""
    process = start(command, port, environment)
    try:
        load = Load(port, single)
        load.closed_loop(4, 2)
        return load.closed_loop(clients, seconds)
    finally:
        stop(process)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def section(saved: dict) -> str:
    ours, peer = saved["ours"], saved["mlflow"]
    workers, rounds = ours["workers_c32"], ours["logging_rounds"]
    logged_share = statistics.median(one["on"] / one["off"] for one in rounds)
    lines = ["", "# Serving benchmark", "",
             f"Run: {saved['started']} (UTC), `python -m benchmarks.serving`: each closed-loop measurement "
             f"{saved['seconds']} s after a warm-up; both servers in their own process on 127.0.0.1, "
             "the load from one client process: keep-alive connections on one asyncio loop (the client "
             "shares the 2 cores).", "",
             "- **S**: `mlops serve` of the registered version: raw trips in, window features looked up "
             "in the online snapshot, trip features computed; request logging off unless said",
             "- **F**: `mlflow models serve --env-manager local` of the same version: the precomputed "
             "feature rows of the same trips", "",
             "| load | S req/s | S p50 ms | S p99 ms | F req/s | F p50 ms | F p99 ms | S/F throughput |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for clients in CONCURRENCY:
        key = f"c{clients}"
        mine, theirs = ours[key], peer[key]
        lines.append(f"| single rows, concurrency {clients} | {mine['per_second']:,.0f} | "
                     f"{mine['p50_ms']:.2f} | {mine['p99_ms']:.2f} | {theirs['per_second']:,.0f} | "
                     f"{theirs['p50_ms']:.2f} | {theirs['p99_ms']:.2f} | "
                     f"{mine['per_second'] / theirs['per_second']:.2f} |")
    lines += ["", f"- {BATCH_ROWS:,}-row batches: S {ours['batch_rows_per_second']:,.0f} rows/s, "
              f"F {peer['batch_rows_per_second']:,.0f} rows/s "
              f"({ours['batch_rows_per_second'] / peer['batch_rows_per_second']:.2f}x)",
              f"- S at a fixed {FIXED_RATE} requests/s: p50 {ours['fixed']['p50_ms']:.2f} ms, "
              f"p99 {ours['fixed']['p99_ms']:.2f} ms",
              f"- S at concurrency 8 with request logging on, against off, fresh servers in turn "
              f"({len(rounds)} rounds): " + ", ".join(f"{one['on']:,.0f} / {one['off']:,.0f} req/s"
                                                      for one in rounds)
              + f"; median ratio {logged_share:.2f}",
              f"- S with `--workers {WORKERS}` at concurrency 32: {workers['per_second']:,.0f} req/s "
              f"({workers['per_second'] / ours['c32']['per_second']:.2f}x one worker), p50 "
              f"{workers['p50_ms']:.2f} ms, p99 {workers['p99_ms']:.2f} ms"]
    ratio = ours["c8"]["per_second"] / peer["c8"]["per_second"]
    best_c32_p99 = min(ours["c32"]["p99_ms"], workers["p99_ms"])
    logging_cost = 1 - logged_share
    failures = sum(result.get("failures", 0) for side in (ours, peer) for result in side.values()
                   if isinstance(result, dict))
    lines += ["", "## Targets", "",
              f"- S >= 2x F single-row throughput at concurrency 8: {ratio:.2f}, "
              f"{'met' if ratio >= 2 else '**missed**'}",
              f"- S p99 under 20 ms at {FIXED_RATE} requests/s: {ours['fixed']['p99_ms']:.2f} ms, "
              f"{'met' if ours['fixed']['p99_ms'] < 20 else '**missed**'}",
              f"- S p99 under 20 ms at concurrency 32: {ours['c32']['p99_ms']:.2f} ms with one worker, "
              f"{workers['p99_ms']:.2f} ms with {WORKERS}, {'met' if best_c32_p99 < 20 else '**missed**'}",
              f"- request logging costs at most 10% of throughput: {100 * logging_cost:.1f}%, "
              f"{'met' if logging_cost <= 0.10 else '**missed**'}",
              f"- failed requests: {failures}"]
    return "\n".join(lines) + "\n"


def main():
    common.use_working_tree()
    seconds = float(os.environ.get("BENCH_SERVING_SECONDS", "8"))
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as folder:
        store = Path(folder)
        tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
        common.keep_mlflow_in(store / "home")
        spark = common.spark_session()
        common.prepare_data(spark, FEATURE_ROWS)
        common.train_and_register(spark, FEATURE_ROWS, tracking_uri, store / "artifacts")
        raw, feature_rows, snapshot = trips_and_snapshot(spark)
        spark.stop()
        import mlflow

        mlflow.MlflowClient(tracking_uri, tracking_uri).set_model_version_tag(
            common.MODEL_NAME, "1", "model_validation_status", "PASSED")
        from mlops.serving import online_store

        online_store.publish(store / "online_store", snapshot)
        # mlflow models serve starts uvicorn by name: the environment's scripts must be on PATH.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        environment = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, MLOPS_HOME=str(store / "home"),
                           PATH=path)
        port = free_port()
        ours_command = [sys.executable, "-m", "mlops", "serve", "--model", common.MODEL_NAME,
                        "--port", str(port), "--online-store", str(store / "online_store"),
                        "--max-feature-age-minutes", "1e9"]
        single = [body([trip]) for trip in raw]
        batches = [body(batch_of(raw))]

        def fixed(load):
            return {"fixed": load.fixed_rate(FIXED_RATE, seconds)}

        print("our server", flush=True)
        ours = measure_server(ours_command, port, environment, single, batches, seconds, fixed)
        logged_command = [*ours_command, "--log-table", str(store / "log"), "--flush-seconds", "1"]
        ours["logging_rounds"] = []
        for round_number in range(1, LOGGING_ROUNDS + 1):
            # Fresh servers, off then on, in turn: the machine's drift falls on both sides alike.
            print(f"our server, request logging off then on, round {round_number} of {LOGGING_ROUNDS}",
                  flush=True)
            ours["logging_rounds"].append(
                {"off": measure_one_load(ours_command, port, environment, single, 8, seconds)["per_second"],
                 "on": measure_one_load(logged_command, port, environment, single, 8, seconds)["per_second"]})
        print(f"our server, {WORKERS} workers", flush=True)
        ours["workers_c32"] = measure_one_load([*ours_command, "--workers", str(WORKERS)], port, environment,
                                               single, 32, seconds)
        print("mlflow models serve", flush=True)
        peer_command = [sys.executable, "-m", "mlflow", "models", "serve",
                        "-m", f"models:/{common.MODEL_NAME}/1", "-p", str(port), "-h", "127.0.0.1",
                        "--env-manager", "local"]
        peer = measure_server(peer_command, port, environment, [body([row]) for row in feature_rows],
                              [body(batch_of(feature_rows))], seconds)
        saved = {"started": started, "seconds": seconds, "ours": ours, "mlflow": peer}
        common.save_section("serving", saved, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
