"""The JSON record of one local job run: written atomically, secrets redacted."""
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from mlops.errors import JobError
from mlops.observability.redaction import SECRET_VALUE_MARKER, redact_params, redact_text
from mlops.platform.home import runs_dir, utc_now

SUCCESS = "SUCCESS"
FAILED = "FAILED"
RUNNING = "RUNNING"
PENDING = "PENDING"
UPSTREAM_FAILED = "UPSTREAM_FAILED"
# A task not run because a condition it depends on had the other outcome; the run still succeeds.
EXCLUDED = "EXCLUDED"


@dataclass
class RunRecord:
    """The JSON record of one local job run, as written to ``path``."""

    run_id: str
    path: Path
    job_name: str
    job_file: str
    parameters: dict[str, str]
    state: str
    start_time: str
    end_time: Optional[str] = None
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    # One entry per repair, as in the Databricks run's repair history.
    repairs: list[dict[str, Any]] = field(default_factory=list)
    # The process running the record now; a RUNNING record whose process is gone was abandoned.
    pid: Optional[int] = None

    def to_json(self) -> dict[str, Any]:
        """The record as written: secret parameters, and secrets in errors and exit values, redacted."""
        tasks = {key: _redacted_entry(entry) for key, entry in self.tasks.items()}
        return {"run_id": self.run_id, "job_name": self.job_name, "job_file": self.job_file,
                "parameters": redact_params(self.parameters), "state": self.state,
                "start_time": self.start_time, "end_time": self.end_time, "pid": self.pid,
                "repairs": self.repairs, "tasks": tasks}

    def save(self) -> None:
        """Write the record atomically, so a reader never sees half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.run_id}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(self.to_json(), stream, indent=2, sort_keys=False)
                stream.write("\n")
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, run_id: str) -> "RunRecord":
        path = runs_dir() / f"{run_id}.json"
        if not path.is_file() or "/" in run_id:
            recent = sorted(candidate.stem for candidate in runs_dir().glob("*.json"))[-10:]
            raise JobError(f"no run record for run id '{run_id}' in {runs_dir()}; "
                           f"recent run ids: {', '.join(reversed(recent)) or 'none'}")
        return cls._read(path)

    @classmethod
    def _read(cls, path: Path) -> "RunRecord":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise JobError(f"run record {path} is not valid JSON: {error}") from error
        return cls(run_id=data["run_id"], path=path, job_name=data["job_name"], job_file=data["job_file"],
                   parameters=data.get("parameters", {}), state=data["state"], start_time=data["start_time"],
                   end_time=data.get("end_time"), tasks=data.get("tasks", {}),
                   repairs=data.get("repairs", []), pid=data.get("pid"))

    def summary(self) -> list:
        """One line per task: its state and what it decided."""
        width = max((len(key) for key in self.tasks), default=0)
        return [f"  {key.ljust(width)}  {entry['state']:<15}  {task_outcome(entry)}".rstrip()
                for key, entry in self.tasks.items()]

    @classmethod
    def recent(cls, limit: int = 20) -> list:
        """The latest run records, newest first (run ids sort by start time)."""
        records = []
        for path in sorted(runs_dir().glob("*.json"), reverse=True)[:limit]:
            try:
                records.append(cls._read(path))
            except (JobError, KeyError):
                continue
        return records

    @classmethod
    def running(cls) -> list:
        """Every record still marked RUNNING."""
        records = []
        for path in sorted(runs_dir().glob("*.json")):
            try:
                record = cls._read(path)
            except (JobError, KeyError):
                continue
            if record.state == RUNNING:
                records.append(record)
        return records

    def abandoned(self) -> bool:
        """RUNNING, but the process that ran it is gone (killed, or its machine restarted)."""
        if self.state != RUNNING or not self.pid:
            return self.state == RUNNING
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def close(self, interrupted: str = "") -> None:
        """End every unfinished task, then the run: RUNNING tasks FAILED, PENDING ones UPSTREAM_FAILED."""
        for entry in self.tasks.values():
            if entry["state"] == RUNNING:
                entry.update(state=FAILED, error=interrupted or "interrupted")
            elif entry["state"] == PENDING:
                entry.update(state=UPSTREAM_FAILED, error="not run: the run was interrupted")
        self.state = SUCCESS if all(entry["state"] in (SUCCESS, EXCLUDED) for entry in self.tasks.values()) \
            else FAILED
        self.end_time = now()
        self.pid = None


def task_outcome(entry: dict) -> str:
    """What a task decided, in a few words, from its state, error and task values."""
    if entry.get("state") in (FAILED, UPSTREAM_FAILED, EXCLUDED):
        return entry.get("error", "")
    if "outcome" in entry:
        return f"condition {entry['outcome']}"
    values = entry.get("task_values", {})
    parts = []
    if values.get("model_version"):
        parts.append(" ".join(filter(None, ("model", values.get("model_name"), "version",
                                            str(values["model_version"])))))
    if values.get("hyperparameters"):
        parts.append(values["hyperparameters"])
    if values.get("validation_status"):
        parts.append(f"validation {values['validation_status']}")
    if values.get("promotion_decision"):
        reason = values.get("promotion_reason")
        parts.append(values["promotion_decision"] + (f" ({reason})" if reason else ""))
    if values.get("approval_request"):
        parts.append(values["approval_request"])
    if "stream_batches" in values:
        batches = values["stream_batches"]
        parts.append(f"{len(batches)} stream batch(es)" + "".join(f"\n    {line}" for line in batches))
    if "rows_scored" in values:
        parts.append(f"{values['rows_scored']} rows scored")
    if values.get("blob_url"):
        parts.append(f"published to {values['blob_url']}")
    if "retrain_required" in values:
        verdict = "retraining required" if values["retrain_required"] == "true" else "no retraining"
        parts.append(f"{verdict}: {values.get('reason', '')}".rstrip(": "))
        if values["retrain_required"] == "true" and values.get("training_params_from"):
            tunes = values.get("execute_tuning") == "true"
            parts.append(f"it tunes again with {values.get('tuning_trials')} trials" if tunes
                         else "it reuses the Champion's tuned params")
    if values.get("report"):
        parts.append(f"report {values['report']}")
    if entry.get("child_run_id"):
        parts.append(f"child run {entry['child_run_id']}")
    return "; ".join(parts) or (f"exit value {entry['exit_value']}" if entry.get("exit_value") else "")


def _redacted_entry(entry: dict) -> dict:
    redacted = dict(entry)
    if "parameters" in entry:
        redacted["parameters"] = redact_params(entry["parameters"])
    for name in ("error", "exit_value"):
        if isinstance(entry.get(name), str):
            redacted[name] = redact_text(entry[name], secret_marker=SECRET_VALUE_MARKER)
    return redacted


def now() -> str:
    return utc_now("milliseconds")
