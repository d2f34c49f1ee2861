"""The last chapter of ``make demo``: a short A/B test of a retrained Challenger on live requests.

The training job retrains on March without deploying, so the new version waits as the
Challenger. ``mlops serve`` gives it 20% of the requests, sticky by trip; the trips' fares
arrive as labels, ``merge_labels``' own merge fills them in, and the online comparison judges
the two arms from the inference log.
"""
import datetime
import json
import urllib.request

from taxi_fares.data import generate_trips
from taxi_fares.features import LABEL_COLUMN, clean_trips
from taxi_fares.schema import RAW_COLUMNS

from mlops import platform
from mlops.config import ScoringConfig
from mlops.data.tables import TableStore
from mlops.inference import engine
from mlops.lifecycle.registry import CHALLENGER, CHAMPION, RegistryClient
from mlops.monitoring import online_log
from mlops.serving.start import ServeSettings, close_server, open_server
from mlops.stages.labels import merge_label_table

DAY = datetime.date(2016, 4, 2)
REQUESTS = 3000
CHALLENGER_PERCENT = 20
ONLINE_LABELS = "taxi_fares_online_labels"
RETRAIN = {"training_data_start_date": "2016-03-02", "training_data_end_date": "2016-03-31",
           "seed": "11", "execute_deployment": "false"}


def ask(server_url: str, trip: dict, key: str) -> tuple[str, str]:
    """One trip to the server; its (arm, request id)."""
    request = urllib.request.Request(f"{server_url}/invocations", method="POST",
                                     data=json.dumps({"dataframe_records": [trip]}).encode(),
                                     headers={"Content-Type": "application/json", "X-Request-Key": key})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers["X-Model-Arm"], response.headers["X-Request-Id"]


def online_trips(spark) -> list[tuple[dict, float]]:
    """April trips as a taxi app sends them (no fare), each with the fare it will turn out to have."""
    # Materialized first: the generator's expressions and the cleaning's in one projection are
    # more than Spark's code generator compiles, and its fallback prints the whole plan.
    generated = generate_trips(spark, REQUESTS, DAY, DAY, seed=12).localCheckpoint()
    trips = clean_trips(generated).select(*RAW_COLUMNS)
    asked = [name for name in RAW_COLUMNS if name != LABEL_COLUMN]

    def sent(value):
        return value.isoformat() if isinstance(value, datetime.datetime) else value
    return [({name: sent(row[name]) for name in asked}, row[LABEL_COLUMN]) for row in trips.collect()]


def ab_test(spark, run, banner, training_job: str, config: ScoringConfig) -> None:
    banner(f"A/B test: a retrained Challenger on {CHALLENGER_PERCENT}% of online requests")
    run(training_job, RETRAIN)
    registry = RegistryClient(config.registered_model_name, config.registry_uri)
    champion, challenger = (str(registry.alias_version(alias)) for alias in (CHAMPION, CHALLENGER))
    tables = TableStore(spark, config.table_location)
    server, watchers = open_server(ServeSettings(
        model_name=config.registered_model_name, registry_uri=config.registry_uri, port=0,
        online_store=platform.driver_path(config.online_store_path), flush_seconds=0.5,
        log_table=platform.driver_path(tables.uri(config.predictions_table)),
        challenger_percent=CHALLENGER_PERCENT))
    fares, arms = [], []
    try:
        for number, (trip, fare) in enumerate(online_trips(spark)):
            arm, request_id = ask(server.url, trip, f"trip-{number}")
            fares.append((request_id, fare))
            arms.append(arm)
    finally:
        close_server(server, watchers)
    print(f"{len(arms)} trips of {DAY} sent to `mlops serve --challenger-percent {CHALLENGER_PERCENT}`: "
          f"{arms.count('champion')} answered by the Champion (version {champion}), "
          f"{arms.count('challenger')} by the Challenger (version {challenger})")
    tables.write(spark.createDataFrame(fares, f"{engine.REQUEST_ID} string, {LABEL_COLUMN} double"),
                 ONLINE_LABELS)
    counts = merge_label_table(tables, ONLINE_LABELS, config.predictions_table)
    print(f"their fares arrive as labels ({ONLINE_LABELS}): {counts['rows_labelled_now']} log rows labelled")
    verdict = online_log.compare_log(tables.read(config.predictions_table), champion, challenger, DAY, DAY)
    print(f"mlops model compare-online {config.registered_model_name} --start {DAY} --end {DAY}:")
    print(f"  {verdict.line()}")
