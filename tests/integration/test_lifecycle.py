"""The model lifecycle end to end: the real train -> validate -> deploy job through the local runtime.

The tests tell one story on one MLOPS_HOME, in file order: the first model beats the heuristic,
a better one replaces it, a worse one does not, a threshold failure stops the job at validate,
a promotion waits for approval, and a deploy failure is repaired by re-running deploy alone.
"""
import datetime
import shutil
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest

from mlops import datagen, model_cli
from mlops.local.jobs import FAILED, SUCCESS, UPSTREAM_FAILED, run_job
from mlops.registry import APPROVAL_TAG, CHALLENGER, CHAMPION, VALIDATION_STATUS_TAG, RegistryClient
from support.spark_cluster import REPO_ROOT, ensure_wheels

pytestmark = pytest.mark.slow

JOB = REPO_ROOT / "databricks_jobs" / "taxi_fares_training.json"
MODEL = "taxi_fares"
START, END = datetime.date(2016, 1, 1), datetime.date(2016, 1, 31)


@pytest.fixture(scope="module")
def lifecycle(spark, tmp_path_factory):
    """A fresh MLOPS_HOME with ~20k synthetic January trips, and the parameters every run shares."""
    ensure_wheels()
    home = tmp_path_factory.mktemp("lifecycle_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_HOME", str(home))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
        datagen.generate(spark, 20_000, START, END, "dbfs:/raw/trips")
        parameters = {
            "wheel_path": str(REPO_ROOT / "dist"), "taxi_fares_raw_data": "dbfs:/raw/trips",
            "table_location": "dbfs:/tables", "experiment_name": "/Shared/taxi_fares_lifecycle",
            "registered_model_name": MODEL, "training_data_start_date": str(START),
            "training_data_end_date": str(END), "execute_feature_engineering": "false",
            # Trips over 10 miles are rare in the synthetic data; their rmse is several times the
            # overall one, so the default factor of 2 would fail every small model.
            "validation_slice_factor": "6",
        }
        yield home, parameters


def run(lifecycle, spark, repair_run_id=None, **overrides):
    _, parameters = lifecycle
    return run_job(JOB, {**parameters, **overrides}, repair_run_id=repair_run_id, spark=spark)


def states(record):
    return {key: entry["state"] for key, entry in record.tasks.items()}


def registry():
    return RegistryClient(MODEL)


def version_tags(version):
    return registry().get_version(version).tags


def test_first_model_is_validated_and_promoted_over_the_heuristic(lifecycle, spark):
    record = run(lifecycle, spark, execute_feature_engineering="true", training_num_rounds="30")

    assert states(record) == {"train": SUCCESS, "validate": SUCCESS, "deploy": SUCCESS}, record.tasks
    assert record.tasks["validate"]["task_values"]["validation_status"] == "PASSED"
    assert registry().aliases() == {CHAMPION: "1"}
    tags = version_tags("1")
    assert tags[VALIDATION_STATUS_TAG] == "PASSED"
    assert (tags["promotion_decision"], tags["promotion_compared_with"]) == ("promoted", "heuristic")
    assert float(tags["promotion_challenger_rmse"]) < float(tags["promotion_reference_rmse"])
    assert "Validation PASSED" in registry().get_version("1").description
    validation_run = mlflow.get_run(tags["validation_run_id"])
    results = mlflow.artifacts.load_dict(f"{validation_run.info.artifact_uri}/validation_results.json")
    assert results["status"] == "PASSED" and len(results["checks"]) >= 10
    assert all({"name", "passed", "value", "threshold"} <= set(check) for check in results["checks"])
    deploy_run = mlflow.get_run(tags["promotion_run_id"])
    assert {"challenger_rmse", "heuristic_rmse"} <= set(deploy_run.data.metrics)


def test_a_better_challenger_is_promoted_and_the_old_champion_loses_the_alias(lifecycle, spark):
    record = run(lifecycle, spark, training_num_rounds="120")

    assert states(record) == {"train": SUCCESS, "validate": SUCCESS, "deploy": SUCCESS}, record.tasks
    assert registry().aliases() == {CHAMPION: "2"}
    tags = version_tags("2")
    assert (tags["promotion_decision"], tags["promotion_compared_with"]) == ("promoted", "Champion v1")
    assert version_tags("1")["champion_replaced_by"] == "2"
    deploy_run = mlflow.get_run(tags["promotion_run_id"])
    assert deploy_run.data.metrics["challenger_rmse"] <= deploy_run.data.metrics["champion_rmse"]


def test_a_worse_challenger_is_not_promoted(lifecycle, spark):
    # Two rounds barely leave the mean; loose rmse and r2 bars let it reach the comparison.
    record = run(lifecycle, spark, training_num_rounds="2", validation_max_rmse="25",
                 validation_min_r2="0.05")

    assert states(record) == {"train": SUCCESS, "validate": SUCCESS, "deploy": SUCCESS}, record.tasks
    assert record.tasks["deploy"]["task_values"]["promotion_decision"] == "not_promoted"
    assert registry().aliases() == {CHAMPION: "2", CHALLENGER: "3"}
    tags = version_tags("3")
    assert float(tags["promotion_challenger_rmse"]) > float(tags["promotion_reference_rmse"])


def test_a_threshold_failure_tags_failed_sets_no_alias_and_stops_the_job_at_validate(lifecycle, spark):
    # Re-validate version 3 from the model_version parameter, with an rmse bar no model meets.
    record = run(lifecycle, spark, execute_training="false", model_version="3", validation_max_rmse="0.01")

    assert record.state == FAILED
    assert states(record) == {"train": SUCCESS, "validate": FAILED, "deploy": UPSTREAM_FAILED}
    error = record.tasks["validate"]["error"]
    assert "ValidationFailed: model 'taxi_fares' version 3 failed validation: rmse_max:" in error
    assert "threshold 0.0100 (rmse <= validation_max_rmse)" in error
    assert version_tags("3")[VALIDATION_STATUS_TAG] == "FAILED"
    assert registry().aliases() == {CHAMPION: "2"}


def test_require_approval_waits_until_approved_and_approve_refuses_a_failed_version(lifecycle, spark, capsys):
    record = run(lifecycle, spark, training_num_rounds="200", require_approval="true",
                 promotion_tolerance="0.1")

    assert states(record) == {"train": SUCCESS, "validate": SUCCESS, "deploy": SUCCESS}, record.tasks
    tags = version_tags("4")
    assert (tags["promotion_decision"], tags[APPROVAL_TAG]) == ("pending_approval", "pending")
    assert registry().aliases() == {CHAMPION: "2", CHALLENGER: "4"}

    capsys.readouterr()
    assert cli("approve", MODEL, "3", "--by", "carol") == 1
    assert "refusing to approve model 'taxi_fares' version 3: its model_validation_status is FAILED" in \
        capsys.readouterr().err
    assert registry().aliases() == {CHAMPION: "2", CHALLENGER: "4"}

    assert cli("approve", MODEL, "4", "--by", "carol") == 0
    assert registry().aliases() == {CHAMPION: "4"}
    assert (version_tags("4")[APPROVAL_TAG], version_tags("4")["approved_by"]) == ("approved", "carol")


def cli(*argv):
    import argparse

    parser = argparse.ArgumentParser(prog="mlops")
    model_cli.register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["model", *argv])
    return args.func(args)


def champion_artifacts(version) -> Path:
    return Path(urlparse(registry().client.get_model_version_download_uri(MODEL, version)).path)


def test_repair_after_a_deploy_failure_reruns_only_deploy(lifecycle, spark, tmp_path):
    # The Champion's artifacts become unreadable (a storage outage), so deploy cannot load it.
    artifacts = champion_artifacts("4")
    shutil.move(artifacts, tmp_path / "moved")
    try:
        failed = run(lifecycle, spark, execute_training="false", model_version="1")
    finally:
        shutil.move(tmp_path / "moved", artifacts)

    assert states(failed) == {"train": SUCCESS, "validate": SUCCESS, "deploy": FAILED}
    assert "cannot load model 'taxi_fares' version 4" in failed.tasks["deploy"]["error"]
    assert registry().aliases() == {CHAMPION: "4", CHALLENGER: "1"}

    repaired = run(lifecycle, spark, repair_run_id=failed.run_id)

    assert repaired.state == SUCCESS
    assert repaired.tasks["train"]["from_run"] == repaired.tasks["validate"]["from_run"] == failed.run_id
    assert "from_run" not in repaired.tasks["deploy"]
    assert repaired.tasks["deploy"]["task_values"]["promotion_decision"] == "not_promoted"
    assert version_tags("1")["promotion_compared_with"] == "Champion v4"
    assert [str(version.version) for version in registry().list_versions()] == ["1", "2", "3", "4"]


def test_a_switched_off_stage_with_missing_inputs_names_the_parameter(lifecycle, spark):
    record = run(lifecycle, spark, execute_training="false", execute_validation="false")

    assert states(record) == {"train": SUCCESS, "validate": SUCCESS, "deploy": FAILED}
    assert "Turn execute_validation=true back on, or set model_version=" in record.tasks["deploy"]["error"]


def test_model_show_tells_the_whole_story(lifecycle, capsys):
    capsys.readouterr()
    assert cli("show", MODEL) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line[:1].isdigit() and len(line.split()) > 6}
    assert rows["1"][1:4] == [CHALLENGER, "PASSED", "-"]
    assert rows["2"][1:3] == ["-", "PASSED"]
    assert rows["3"][1:3] == ["-", "FAILED"]
    assert rows["4"][1:4] == [CHAMPION, "PASSED", "approved"]
    for event in ("became Champion", "lost Champion", "approved", "promotion_decision=not_promoted"):
        assert event in out
