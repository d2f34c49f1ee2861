"""Typed job configuration, parsed once from job or widget parameters.

Each job has one frozen dataclass. Field names are the parameter names
(the Azure sample's names where it has them); the field type says how the
string value is parsed. Unknown names, malformed values and missing
required values fail here, before any Spark work starts.
"""
import dataclasses
import datetime
import re
import typing
from typing import Any, ClassVar, Iterable, Mapping

from taxi_fares import features
from taxi_fares.training import TrainingParams

from mlops.errors import ConfigError
from mlops.monitoring.settings import MonitoringSettings
from mlops.platform import catalog
from mlops.observability.redaction import REDACTED, redact_params, redact_text

_TRUE = {"true", "1", "yes", "y"}
_FALSE = {"false", "0", "no", "n"}

REQUIRED = "<required>"


def _shown(raw) -> str:
    """A raw value for an error message: quoted, or hidden when it holds a secret."""
    return repr(raw) if redact_text(raw) == raw else REDACTED


def _parse_bool(name, raw):
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"parameter '{name}' must be true or false, got {_shown(raw)}")


# A date, optionally shifted by whole days: a job passes "{{job.start_time.iso_date}}-28d",
# which Databricks (or the local runner) turns into e.g. "2026-11-30-28d" for a rolling range.
_DATE = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})(?:(?P<sign>[+-])(?P<days>\d{1,5})d)?$")


def _parse_date(name, raw):
    text = raw.strip()
    if "{{" in text:
        raise ConfigError(f"parameter '{name}' holds the unresolved reference {_shown(raw)}: only a job run "
                          f"resolves {{{{...}}}} references (on Databricks, or with `mlops job run`)")
    match = _DATE.match(text)
    try:
        date = datetime.date.fromisoformat(match["date"]) if match else None
    except ValueError:
        date = None
    if date is None:
        raise ConfigError(f"parameter '{name}' must be a date as YYYY-MM-DD, optionally shifted by whole "
                          f"days as YYYY-MM-DD-Nd or YYYY-MM-DD+Nd, got {_shown(raw)}")
    days = int(match["days"] or 0) * (-1 if match["sign"] == "-" else 1)
    return date + datetime.timedelta(days=days)


def _parse_number(kind):
    def parse(name, raw):
        try:
            return kind(raw.strip())
        except ValueError:
            raise ConfigError(
                f"parameter '{name}' must be {'an integer' if kind is int else 'a number'}, "
                f"got {_shown(raw)}") from None
    return parse


_PARSERS = {
    str: lambda name, raw: raw.strip(),
    bool: _parse_bool,
    int: _parse_number(int),
    float: _parse_number(float),
    datetime.date: _parse_date,
}


def _format(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Base class: parsing, validation and widget declaration for one job's parameters."""

    # Parameters every job takes.
    env: str = "dev"
    wheel_path: str = "dist"
    wheel_version: str = "*"
    registered_model_name: str = "taxi_fares"
    registry_uri: str = ""
    experiment_name: str = "/Shared/taxi_fares/dev/experiments/taxi_fares"
    table_location: str = "dev.taxi_fares"
    appinsights_secret_scope: str = ""
    appinsights_secret_key: str = ""
    telemetry_backend: str = "opentelemetry"
    git_commit: str = ""

    CHOICES: ClassVar[dict] = {"env": ("dev", "staging", "prod"),
                               "telemetry_backend": ("opentelemetry", "opencensus")}
    # Fields a job file deliberately does not declare: name -> why. Every other field is declared.
    NOT_IN_JOB_FILE: ClassVar[dict] = {
        "telemetry_backend": "the default exporter suits every target; a run that must ingest through "
                             "OpenCensus passes it"}

    @classmethod
    def parameter_names(cls):
        return [field.name for field in dataclasses.fields(cls)]

    @classmethod
    def defaults(cls) -> dict:
        """Parameter defaults as the strings a widget or job file holds."""
        return {field.name: ("" if field.default == REQUIRED else _format(field.default))
                for field in dataclasses.fields(cls)}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]):
        """Parse string parameters; reject unknown names and bad values."""
        valid = cls.parameter_names()
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ConfigError(
                f"unknown parameter(s) {', '.join(unknown)} for {cls.__name__}; "
                f"valid names are: {', '.join(sorted(valid))}")
        hints = typing.get_type_hints(cls)
        values = {}
        for field in dataclasses.fields(cls):
            raw = params.get(field.name)
            if raw is None or (isinstance(raw, str) and raw.strip() == ""):
                if field.default == REQUIRED:
                    raise ConfigError(f"parameter '{field.name}' is required")
                continue
            values[field.name] = _PARSERS[hints[field.name]](field.name, str(raw))
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def from_widgets(cls, dbutils):
        """Read every widget and job parameter once, then parse them."""
        try:
            params = dict(dbutils.widgets.getAll())
        except AttributeError:
            # Older runtimes have no getAll(); read the declared names one by one.
            params = {name: dbutils.widgets.get(name) for name in cls.parameter_names()}
        return cls.from_params(params)

    @classmethod
    def from_notebook(cls, dbutils):
        """Declare this job's widgets, then parse every widget and job parameter once."""
        cls.declare_widgets(dbutils)
        return cls.from_widgets(dbutils)

    @classmethod
    def declare_widgets(cls, dbutils):
        """Declare a text widget per parameter, defaulting to the config's default."""
        for name, default in cls.defaults().items():
            dbutils.widgets.text(name, default, name)

    def validate(self):
        for name, choices in self.CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ConfigError(
                    f"parameter '{name}' must be one of {', '.join(choices)}, got {value!r}")
        _check_date_range(self)
        catalog.check_location(self.table_location)

    def as_params(self) -> dict:
        """All parameters as strings, secrets redacted: safe to log anywhere."""
        return redact_params({field.name: _format(getattr(self, field.name))
                              for field in dataclasses.fields(self)})

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _check_date_range(config):
    for prefix in ("training_data", "scoring_data"):
        start = getattr(config, f"{prefix}_start_date", None)
        end = getattr(config, f"{prefix}_end_date", None)
        if start and end and start > end:
            raise ConfigError(
                f"parameter '{prefix}_start_date' ({start}) is after "
                f"'{prefix}_end_date' ({end}); swap them or fix the range")


def _require(config, name, holds, rule):
    if not holds:
        raise ConfigError(f"parameter '{name}' must be {rule}, got {getattr(config, name)}")


def parse_assignments(pairs: Iterable[str]) -> dict:
    """Turn ``["name=value", ...]`` into a dict; ConfigError on a malformed or repeated name."""
    assignments = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        name = name.strip()
        if not separator or not name:
            raise ConfigError(f"parameter {_shown(pair)} must be written name=value")
        if name in assignments:
            raise ConfigError(f"parameter '{name}' given more than once")
        assignments[name] = value
    return assignments


@dataclasses.dataclass(frozen=True)
class RawTripsConfig(JobConfig):
    """Parameters of the jobs that read raw trips and build feature tables."""

    taxi_fares_raw_data: str = "dbfs:/mlops/taxi_fares/raw/trips"
    execute_feature_engineering: bool = True
    # Feature engineering publishes each zip's newest window here for online serving; empty: it does not.
    online_store_path: str = "dbfs:/mlops/taxi_fares/online_store"


@dataclasses.dataclass(frozen=True)
class TrainingConfig(RawTripsConfig):
    """Parameters of the training job: train, validate and deploy tasks share them."""

    training_data_start_date: datetime.date = datetime.date(2016, 1, 1)
    training_data_end_date: datetime.date = datetime.date(2016, 1, 31)
    execute_training: bool = True
    # LightGBM settings default to the ML wheel's own defaults.
    training_num_leaves: int = TrainingParams.num_leaves
    training_objective: str = TrainingParams.objective
    training_metric: str = TrainingParams.metric
    training_num_rounds: int = TrainingParams.num_rounds
    training_learning_rate: float = TrainingParams.learning_rate
    training_sample_rows: int = 2_000_000
    # The held-out set: the latest test_fraction of the range by pickup time, after a gap.
    test_fraction: float = 0.2
    held_out_gap_minutes: int = 60
    seed: int = 42
    # Validation and promotion (tasks `validate` and `deploy`).
    model_version: str = ""
    execute_validation: bool = True
    execute_deployment: bool = True
    validation_max_rmse: float = 10.0
    validation_min_r2: float = 0.5
    validation_slice_factor: float = 5.0
    validation_sample_rows: int = 200_000
    promotion_tolerance: float = 0.0
    require_approval: bool = False
    # The inference log whose <name>_baseline table receives each validated version's reference profile.
    predictions_table: str = "taxi_fares_predictions"

    def validate(self):
        super().validate()
        if self.training_sample_rows < 100:
            raise ConfigError("parameter 'training_sample_rows' must be at least 100, "
                              f"got {self.training_sample_rows}")
        if not 0.0 < self.test_fraction < 0.9:
            raise ConfigError("parameter 'test_fraction' must be between 0 and 0.9, "
                              f"got {self.test_fraction}")
        _require(self, "held_out_gap_minutes", self.held_out_gap_minutes >= features.LONGEST_WINDOW_MINUTES,
                 f"at least {features.LONGEST_WINDOW_MINUTES} (the longest feature window)")
        try:
            self.time_split()
        except ValueError as error:
            raise ConfigError(f"parameters 'test_fraction' and 'held_out_gap_minutes': {error}") from None
        _require(self, "validation_sample_rows", self.validation_sample_rows >= 100, "at least 100")
        _require(self, "validation_slice_factor", self.validation_slice_factor >= 1.0, "at least 1")
        _require(self, "validation_max_rmse", self.validation_max_rmse > 0, "above 0")
        # r2 is at most 1; below -1 a model is worse than twice the mean's error, no gate at all.
        _require(self, "validation_min_r2", -1.0 <= self.validation_min_r2 <= 1.0, "between -1 and 1")
        _require(self, "promotion_tolerance", self.promotion_tolerance > -1.0, "above -1")
        try:
            self.training_params().validate(label=lambda field: f"parameter '{_TRAINING_PARAMETERS[field]}'")
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def time_split(self) -> "features.TimeSplit":
        """The out-of-time split of the training range (see :class:`taxi_fares.features.TimeSplit`)."""
        return features.TimeSplit.of_range(self.training_data_start_date, self.training_data_end_date,
                                           self.test_fraction, self.held_out_gap_minutes)

    def training_params(self):
        """The LightGBM parameters; each comes from the job parameter of the same meaning."""
        return TrainingParams(**{field: getattr(self, parameter)
                                 for field, parameter in _TRAINING_PARAMETERS.items()})


@dataclasses.dataclass(frozen=True)
class ScoringConfig(RawTripsConfig):
    """Parameters of the batch scoring job."""

    scoring_data_start_date: datetime.date = datetime.date(2016, 2, 1)
    scoring_data_end_date: datetime.date = datetime.date(2016, 2, 29)
    trained_model_version: str = ""
    model_alias: str = "Champion"
    allow_unvalidated_model: bool = False
    predictions_table: str = "taxi_fares_predictions"
    execute_label_merge: bool = False
    labels_table: str = "taxi_fares_labels"
    publish_results: bool = True
    blob_container: str = "taxi-fares-scores"
    blob_prefix: str = "batch-scores"
    storage_secret_scope: str = ""
    storage_secret_key: str = ""
    publish_folder: str = "dbfs:/mlops/taxi_fares/published"


@dataclasses.dataclass(frozen=True)
class MonitoringConfig(JobConfig):
    """Parameters of the monitoring job: the windows to watch, the thresholds, and the retraining rule."""

    predictions_table: str = "taxi_fares_predictions"
    # Passed on to the training job when monitoring starts a retraining.
    taxi_fares_raw_data: str = "dbfs:/mlops/taxi_fares/raw/trips"
    # Empty: the last monitoring_windows windows up to monitoring_end_date; empty end: today (UTC).
    monitoring_start_date: str = ""
    monitoring_end_date: str = ""
    monitoring_windows: int = 7
    # Calendar features: a daily window holds one weekday, so these always differ from the reference.
    drift_exempt_columns: str = "pickup_day_of_week,is_weekend"
    retrain_on: str = "drift_or_quality"
    retraining_range_days: int = 30
    # No retraining while a run of this job is in progress (its task runs in the experiment say RUNNING).
    training_job_name: str = "taxi_fares_training"
    # "spark" runs everywhere; "lakehouse" has Databricks Lakehouse Monitoring compute the tables.
    monitoring_backend: str = "spark"
    lakehouse_assets_dir: str = "/Shared/taxi_fares/dev/monitoring"
    lakehouse_refresh_timeout_minutes: int = 60
    # Thresholds and the rule default to the monitor's own defaults.
    monitoring_granularity: str = MonitoringSettings.granularity
    monitoring_min_rows: int = MonitoringSettings.min_rows
    psi_threshold: float = MonitoringSettings.psi_threshold
    wasserstein_threshold: float = MonitoringSettings.wasserstein_threshold
    rmse_ratio_threshold: float = MonitoringSettings.rmse_ratio_threshold
    drift_alpha: float = MonitoringSettings.alpha
    retrain_windows: int = MonitoringSettings.retrain_windows
    retrain_min_violations: int = MonitoringSettings.retrain_min_violations
    retrain_cooldown_days: int = MonitoringSettings.cooldown_days

    CHOICES: ClassVar[dict] = {**JobConfig.CHOICES, "retrain_on": ("drift", "quality", "drift_or_quality"),
                               "monitoring_backend": ("spark", "lakehouse")}

    def validate(self):
        super().validate()
        _require(self, "monitoring_windows", self.monitoring_windows >= 1, "at least 1")
        _require(self, "retraining_range_days", self.retraining_range_days >= 1, "at least 1")
        _require(self, "lakehouse_refresh_timeout_minutes", self.lakehouse_refresh_timeout_minutes >= 1,
                 "at least 1")
        self.settings()
        start, end = self.monitoring_range()
        if start > end:
            raise ConfigError(f"parameter 'monitoring_start_date' ({start}) is after 'monitoring_end_date' "
                              f"({end}); swap them or fix the range")

    def settings(self):
        """The monitor's thresholds and rule; ConfigError when one is out of range."""
        values = {field: getattr(self, parameter) for field, parameter in _MONITORING_PARAMETERS.items()}
        exempt = tuple(name.strip() for name in self.drift_exempt_columns.split(",") if name.strip())
        unknown = sorted(set(exempt) - set(features.FEATURE_COLUMNS) - {"prediction"})
        if unknown:
            raise ConfigError(f"parameter 'drift_exempt_columns' names {', '.join(unknown)}, which the "
                              "model does not use; monitored columns: "
                              f"{', '.join(features.FEATURE_COLUMNS)}, prediction")
        try:
            return MonitoringSettings(**values, exempt_columns=exempt)
        except ConfigError as error:
            field = str(error).split(" ", 1)[0].strip("'")
            parameter = _MONITORING_PARAMETERS.get(field)
            raise ConfigError(f"parameter '{parameter}': {error}" if parameter else str(error)) from None

    def monitoring_range(self, today: datetime.date | None = None) -> tuple[datetime.date, datetime.date]:
        """The event dates monitored (inclusive): explicit, or the last windows up to the end date."""
        end = _parse_date("monitoring_end_date", self.monitoring_end_date) if self.monitoring_end_date \
            else (today or datetime.datetime.now(datetime.timezone.utc).date())
        if self.monitoring_start_date:
            return _parse_date("monitoring_start_date", self.monitoring_start_date), end
        length = self.settings().window_length * self.monitoring_windows
        return end - datetime.timedelta(days=max(length.days, 1) - 1), end


# MonitoringSettings field -> the job parameter that sets it.
_MONITORING_PARAMETERS = {"granularity": "monitoring_granularity", "psi_threshold": "psi_threshold",
                          "wasserstein_threshold": "wasserstein_threshold",
                          "rmse_ratio_threshold": "rmse_ratio_threshold", "alpha": "drift_alpha",
                          "min_rows": "monitoring_min_rows", "retrain_windows": "retrain_windows",
                          "retrain_min_violations": "retrain_min_violations",
                          "cooldown_days": "retrain_cooldown_days"}

# LightGBM parameter -> the job parameter that sets it.
_TRAINING_PARAMETERS = {"num_leaves": "training_num_leaves", "objective": "training_objective",
                        "metric": "training_metric", "num_rounds": "training_num_rounds",
                        "learning_rate": "training_learning_rate", "seed": "seed"}
