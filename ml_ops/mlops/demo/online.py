"""The last chapter of ``make demo``: the Champion behind ``mlops serve`` for a few seconds.

Three trips a taxi app might ask about, just after the newest online feature snapshot, go to
the server as raw trips; it looks their zip windows up, answers with fares and the version
that produced them, and logs the requests into the inference log.
"""
import datetime
import json
import urllib.request

from mlops import platform
from mlops.config import ScoringConfig
from mlops.data.tables import TableStore
from mlops.serving import online_store
from mlops.serving.start import ServeSettings, close_server, open_server

EXAMPLES = ((2.1, 11.0), (5.4, 22.0), (11.8, 38.0))  # miles, expected minutes


def example_trips(store_folder) -> list[dict]:
    """Three trips picked up just after the snapshot, between zips it knows."""
    snapshot = json.loads((store_folder / f"snapshot-{online_store.read_latest_version(store_folder)}.json")
                          .read_text())
    pickup = datetime.datetime.fromisoformat(snapshot["as_of"]) + datetime.timedelta(minutes=5)

    def current(kind):
        """Zips with a window at the snapshot's newest grid point, busiest first."""
        windows = snapshot[kind].items()
        return [int(zip_code) for zip_code, window in sorted(windows, key=lambda item: -sum(
            value for name, value in item[1].items() if name.startswith("count")))
            if window["window_end"] == snapshot["as_of"]] or [int(zip_code) for zip_code, _ in windows]
    pickups, dropoffs = current("pickup_zip"), current("dropoff_zip")
    return [{"tpep_pickup_datetime": pickup.isoformat(), "trip_distance": miles,
             "trip_duration_minutes": minutes, "pickup_zip": pickups[index % len(pickups)],
             "dropoff_zip": dropoffs[index % len(dropoffs)]}
            for index, (miles, minutes) in enumerate(EXAMPLES)]


def serve_three_trips(banner, config: ScoringConfig) -> None:
    store_folder = platform.driver_path(config.online_store_path)
    log_uri = TableStore(None, config.table_location).uri(config.predictions_table)
    log_table = platform.driver_path(log_uri)
    banner("Online serving: the Champion behind `mlops serve` for a few seconds")
    server, watcher = open_server(ServeSettings(model_name=config.registered_model_name,
                                                registry_uri=config.registry_uri, port=0,
                                                online_store=store_folder, log_table=log_table,
                                                flush_seconds=0.5, poll_seconds=1.0))
    try:
        trips = example_trips(store_folder)
        request = urllib.request.Request(f"{server.url}/invocations", method="POST",
                                         data=json.dumps({"dataframe_records": trips}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            fares = json.loads(response.read())["predictions"]
            version, fallbacks = response.headers["X-Model-Version"], response.headers["X-Feature-Fallbacks"]
        print(f"POST {server.url}/invocations (raw trips, zip windows looked up)")
        for trip, fare in zip(trips, fares):
            print(f"  {trip['trip_distance']:>5.1f} mi, {trip['trip_duration_minutes']:>4.0f} min, zip "
                  f"{trip['pickup_zip']} -> {trip['dropoff_zip']}: fare ${fare:,.2f}")
        print(f"answered by {config.registered_model_name} version {version}; rows with default window "
              f"features: {fallbacks}")
    finally:
        close_server(server, watcher)
    print(f"{server.app.request_log.written} request rows appended to {config.predictions_table}")
