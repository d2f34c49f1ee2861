"""Every Delta operation of the table store, on whatever Spark ``spark_session()`` gives; prints JSON.

Run as a script, so a test can point it at a standalone cluster (MLOPS_SPARK_MASTER) or a
Spark Connect server (SPARK_REMOTE): write, MERGE INTO, MERGE ... UPDATE, DESCRIBE HISTORY,
time travel and the change feed.
"""
import datetime
import json
import sys


def main(location: str) -> dict:
    from mlops.data.tables import TableStore
    from mlops.local.session import spark_session

    spark = spark_session()
    store = TableStore(spark, location)
    day = datetime.date(2016, 2, 1)
    rows = spark.createDataFrame([(f"r{index}", float(index), None, day) for index in range(6)],
                                 "request_id string, prediction double, label double, pickup_date date")
    store.upsert(rows, "log", ["request_id"], ["pickup_date"],
                 properties={"delta.enableChangeDataFeed": "true"})
    rescored = rows.where("request_id IN ('r0', 'r1')").withColumn("prediction", rows.prediction * 10)
    store.upsert(rescored, "log", ["request_id"], ["pickup_date"])
    labels = spark.createDataFrame([("r1", 3.5), ("r4", 4.5)], "request_id string, label double")
    changed = store.fill_column("log", labels, "request_id", "label")
    location_path = store.host.locate(store.uri("log")).spark
    changes = (spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", 2)
               .load(location_path).where("_change_type = 'update_postimage'").collect())
    return {"engine": store.history("log")[0]["engineInfo"],
            "operations": [entry["operation"] for entry in store.history("log")],
            "labelled": changed,
            "rows": sorted((row.request_id, row.prediction, row.label)
                           for row in store.read("log").collect()),
            "first_version_rows": store.read("log", version=0).count(),
            "label_changes": sorted((row.request_id, row.label) for row in changes)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
