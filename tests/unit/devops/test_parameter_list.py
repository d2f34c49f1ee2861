"""One parameter list: each typed config, its bundle job and the README's table name the same parameters.

A job parameter whose default is a bundle reference (``${var.catalog}``...) takes its value
per target; the README shows the reference, and the targets table shows the values.
"""
import re

import pytest

from mlops.config import MonitoringConfig, ScoringConfig, StreamingConfig, TrainingConfig
from mlops.local.bundle import read_yaml

from .conftest import JOBS_DIR, REPO_ROOT

JOBS = {"taxi_fares_training": (TrainingConfig, "## Training job"),
        "taxi_fares_batch_scoring": (ScoringConfig, "## Batch scoring"),
        "taxi_fares_streaming": (StreamingConfig, "## Streaming scoring"),
        "taxi_fares_monitoring": (MonitoringConfig, "## Monitoring and retraining")}
_BACKTICKED = re.compile(r"`([^`]*)`")


def declared(job_name):
    """parameter name -> default, as the job's resource file writes it."""
    job = read_yaml(JOBS_DIR / f"{job_name}.yml")["resources"]["jobs"][job_name]
    return {entry["name"]: entry["default"] for entry in job["parameters"]}


def readme_table(section):
    """parameter name -> default shown, from the first table after ``section`` in the README."""
    text = (REPO_ROOT / "README.md").read_text()
    body = text[text.index(section + "\n"):]
    # The section's own text only: its table ends before the next heading.
    ends = [end for end in (body.find("\n## ", 1), body.find("\n### ", 1)) if end > 0]
    body = body[:min(ends, default=len(body))]
    rows = [line for line in body.splitlines() if line.startswith("| `")]
    assert rows, f"no parameter table under {section}"
    table = {}
    for row in rows:
        names_cell, defaults_cell = [cell.strip() for cell in row.strip("|").split("|")[:2]]
        names = _BACKTICKED.findall(names_cell)
        defaults = [("" if part.strip() == "empty" else _BACKTICKED.findall(part)[0])
                    for part in defaults_cell.split(", ")]
        if len(defaults) == 1 and len(names) > 1:
            defaults *= len(names)
        assert len(defaults) == len(names), f"README row does not give one default per name: {row}"
        table.update(zip(names, defaults))
    return table


@pytest.mark.parametrize("job_name", JOBS)
def test_every_config_field_is_declared_by_the_job_file_unless_excused(job_name):
    config, _ = JOBS[job_name]
    fields = set(config.parameter_names())
    missing = fields - set(declared(job_name)) - set(config.NOT_IN_JOB_FILE)
    assert not missing, f"{job_name} does not declare {sorted(missing)} and the config gives no reason"
    assert all(reason.strip() for reason in config.NOT_IN_JOB_FILE.values())
    assert set(config.NOT_IN_JOB_FILE) <= fields


@pytest.mark.parametrize("job_name", JOBS)
def test_every_job_parameter_is_a_config_field_with_the_same_default_unless_the_target_sets_it(job_name):
    config, _ = JOBS[job_name]
    parameters = declared(job_name)
    assert set(parameters) <= set(config.parameter_names())
    defaults = config.defaults()
    literal = {name: value for name, value in parameters.items() if "${" not in value}
    assert literal == {name: defaults[name] for name in literal}
    assert len(literal) < len(parameters)


@pytest.mark.parametrize("job_name", JOBS)
def test_the_readme_table_lists_the_job_parameters_and_their_defaults(job_name):
    _, section = JOBS[job_name]
    assert readme_table(section) == declared(job_name)
