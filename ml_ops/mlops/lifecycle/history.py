"""The append-only event log of one registered model.

Each event (a validation verdict, a deploy decision, a Champion move, a pin, an approval, a
rollback) is one JSON artifact ``events/<time>-<id>.json`` of the model's history run: an MLflow
run tagged ``mlops.history_of=<model>`` in the experiment ``/Shared/<model>-history``. Events
are only ever added, never rewritten, so the log keeps what later version tags overwrite.
"""
import json
import logging
import tempfile
import uuid
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import RunStatus

from mlops import platform
from mlops.lifecycle import tracking
from mlops.platform.home import utc_now

logger = logging.getLogger(__name__)

HISTORY_TAG = "mlops.history_of"
EVENTS_FOLDER = "events"


def history_experiment(model_name: str) -> str:
    return f"/Shared/{model_name}-history"


class ModelHistory:
    """Append and read the events of ``model_name``."""

    def __init__(self, client: MlflowClient, model_name: str):
        self.client = client
        self.model_name = model_name

    def append(self, event: str, version, by: str = "", **detail) -> dict:
        """Add one event; returns it as stored."""
        record = {"at": utc_now("milliseconds"), "event": event,
                  "version": str(version) if version is not None else "",
                  "by": by, "detail": {key: str(value) for key, value in detail.items() if value is not None}}
        name = f"{EVENTS_FOLDER}/{record['at'].replace(':', '')}-{uuid.uuid4().hex[:8]}.json"
        self.client.log_text(self._run_id(), json.dumps(record, sort_keys=True), name)
        logger.info("model %s history: %s version %s %s", self.model_name, event, record["version"],
                    record["detail"])
        return record

    def events(self) -> list:
        """Every event, oldest first."""
        events = []
        with tempfile.TemporaryDirectory(prefix="mlops-history-") as folder:
            for run_id in self._run_ids():
                for artifact in self.client.list_artifacts(run_id, EVENTS_FOLDER):
                    local = self.client.download_artifacts(run_id, artifact.path, folder)
                    events.append(json.loads(Path(local).read_text()))
        return sorted(events, key=lambda event: event["at"])

    def _run_ids(self) -> list:
        experiment = self.client.get_experiment_by_name(history_experiment(self.model_name))
        if experiment is None:
            return []
        runs = self.client.search_runs([experiment.experiment_id],
                                       filter_string=f"tags.`{HISTORY_TAG}` = '{self._quoted()}'",
                                       order_by=["attributes.start_time ASC"])
        return [run.info.run_id for run in runs]

    def _run_id(self) -> str:
        with platform.named_lock(f"history-{self.model_name}"):
            existing = self._run_ids()
            if existing:
                return existing[0]
            experiment_id = tracking.experiment_id(self.client, history_experiment(self.model_name))
            run = self.client.create_run(experiment_id, tags={HISTORY_TAG: self.model_name},
                                         run_name=f"history of {self.model_name}")
            self.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
            return run.info.run_id

    def _quoted(self) -> str:
        return self.model_name.replace("'", "\\'")
