"""The streaming chapter of ``make demo``: two files of trips land, and the streaming job scores them.

With ``max_files_per_trigger=1`` each file is one micro-batch; the run summary shows both, and
the inference log shows their rows with the version that scored them.
"""
import datetime

from pyspark.sql import functions as F
from taxi_fares.data import generate_trips

from mlops.config import StreamingConfig
from mlops.data.generator import land_file
from mlops.data.tables import TableStore
from mlops.inference import engine
from mlops.local.job_file import bundle_job

STREAMING_JOB = "taxi_fares_streaming"
APRIL_FIRST = datetime.date(2016, 4, 1)
TRIPS_PER_FILE = 2_000


def stream_two_batches(spark, run, banner, target: str) -> None:
    """Land a morning's and an afternoon's trips of 1 April 2016, then run the streaming job once."""
    config = StreamingConfig.from_params(bundle_job(STREAMING_JOB, target).parameters)
    banner(f"Streaming: two files of trips land in {config.taxi_fares_stream_source}")
    trips = generate_trips(spark, 2 * TRIPS_PER_FILE, APRIL_FIRST, APRIL_FIRST, seed=41)
    hour = F.hour("tpep_pickup_datetime")
    for name, half in (("morning", hour < 12), ("afternoon", hour >= 12)):
        landed = land_file(trips.where(half), config.taxi_fares_stream_source)
        print(f"landed {landed.name} ({name})")
    record = run(STREAMING_JOB, {"max_files_per_trigger": "1"})
    log = TableStore(spark, config.table_location).read(config.predictions_table)
    streamed = (log.where(F.col(engine.JOB_RUN_ID) == F.lit(record.run_id))
                .groupBy(engine.MODEL_VERSION).count().orderBy(engine.MODEL_VERSION).collect())
    for row in streamed:
        print(f"inference log {config.predictions_table}: {row['count']} trips from this streaming run, "
              f"scored by version {row[engine.MODEL_VERSION]}")
