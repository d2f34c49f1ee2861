"""The bundle: valid against the Databricks CLI's own schema, loadable by Databricks' own job models,
and free of what the schema cannot see (variables, references, paths, parameters), per target.

The Databricks CLI itself is on none of the registries these machines reach, so
``databricks bundle validate`` cannot run here; these checks stand in for it.
"""
import importlib.util
import re
import json
import shutil

import jsonschema
import pytest
import regex
import yaml

from mlops.deploy.bundle_check import check_bundle
from mlops.errors import JobError
from mlops.local.bundle import BundleError, bundle_files, load_bundle
from mlops.local.job_file import bundle_job
from support.spark_cluster import ensure_wheels

from .conftest import REPO_ROOT, TARGETS

# The official schema of the Databricks CLI, vendored with its licence.
SCHEMA = REPO_ROOT / "tests" / "schemas" / "databricks-bundle.schema.json"
BUNDLE_FILES = bundle_files(REPO_ROOT)


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA.read_text())
    draft = jsonschema.validators.validator_for(schema)

    # The schema's patterns use Unicode classes (\p{L}), which Python's re cannot compile.
    def pattern(checker, expected, instance, _schema):
        if checker.is_type(instance, "string") and not regex.search(expected, instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {expected!r}")

    return jsonschema.validators.extend(draft, {"pattern": pattern})(schema)


def _leaves(error):
    if not error.context:
        yield error
    for child in error.context:
        yield from _leaves(child)


def _is_reference_alternative(error) -> bool:
    """Every field may also be a ${...} reference; that alternative's failure says nothing."""
    return error.validator in ("type", "pattern") and "pattern" in error.schema


def schema_problems(validator, path) -> list:
    """'file: key.path: message' for each innermost schema error of one bundle file."""
    document = yaml.safe_load(path.read_text())
    problems = set()
    for error in validator.iter_errors(document):
        for leaf in _leaves(error):
            if not _is_reference_alternative(leaf):
                key = ".".join(str(part) for part in leaf.absolute_path) or "(top level)"
                problems.add(f"{path.name}: {key}: {leaf.message[:300]}")
    return sorted(problems)


@pytest.mark.parametrize("path", BUNDLE_FILES, ids=lambda path: path.name)
def test_every_bundle_file_is_valid_against_the_official_schema(validator, path):
    assert schema_problems(validator, path) == []


def test_the_bundle_declares_every_resource_kind_the_deployment_needs():
    bundle = load_bundle(REPO_ROOT, "dev")
    assert set(bundle.resources("jobs")) == {"taxi_fares_training", "taxi_fares_batch_scoring",
                                             "taxi_fares_streaming", "taxi_fares_monitoring",
                                             "taxi_fares_integration_tests"}
    for kind in ("experiments", "registered_models", "schemas", "volumes", "quality_monitors",
                 "model_serving_endpoints"):
        assert bundle.resources(kind), f"no {kind} in the bundle"
    assert set(bundle.resources("volumes")) == {"raw", "online_store", "checkpoints", "published"}
    assert bundle.resources("registered_models")["taxi_fares_model"]["grants"]


def test_the_schema_check_names_the_file_the_key_and_the_problem(validator, tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump({"resources": {"jobs": {"nightly": {
        "name": "nightly", "max_concurrent_runs": "many",
        "tasks": [{"task_key": "t", "notebook_task": {"notebook": "../orchestrator/x.py"}}]}}}}))
    problems = schema_problems(validator, broken)
    assert any(problem.startswith("broken.yml: resources.jobs.nightly.tasks.0.notebook_task:")
               and "'notebook'" in problem for problem in problems), problems
    assert any(problem.startswith("broken.yml: resources.jobs.nightly.max_concurrent_runs:")
               for problem in problems), problems


@pytest.mark.parametrize("target", TARGETS)
def test_databricks_own_job_models_load_every_job(target):
    from databricks.bundles.jobs import Job

    for key, settings in load_bundle(REPO_ROOT, target).resources("jobs").items():
        job = Job.from_dict(settings)
        assert [task.task_key for task in job.tasks] == [task["task_key"] for task in settings["tasks"]]


def test_databricks_own_job_models_refuse_an_unknown_field():
    from databricks.bundles.jobs import Job

    settings = load_bundle(REPO_ROOT, "dev").job_settings("taxi_fares_training")
    settings["tasks"][0]["notebook_task"]["notebook"] = "typo"
    with pytest.raises(ValueError, match="Unexpected field 'notebook' for class NotebookTask"):
        Job.from_dict(settings)


def test_the_repository_bundle_has_no_problem_in_any_target():
    ensure_wheels()
    assert check_bundle(REPO_ROOT) == []


@pytest.fixture
def bundle_copy(tmp_path):
    """A copy of the bundle with its notebooks and two stand-in wheels, to break."""
    for name in ("databricks.yml",):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    for folder in ("databricks_jobs", "orchestrator", "tests/nutter"):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder)
    (tmp_path / "dist").mkdir()
    for wheel in ("taxi_fares-0.1.0+b1-py3-none-any.whl", "taxi_fares_mlops-0.1.0+b1-py3-none-any.whl"):
        (tmp_path / "dist" / wheel).write_bytes(b"")
    assert check_bundle(tmp_path) == []
    return tmp_path


def rewrite(path, old, new):
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_an_undeclared_variable_is_named_with_its_file_key_and_fix(bundle_copy):
    rewrite(bundle_copy / "databricks_jobs/taxi_fares_training.yml", '"${var.validation_min_r2}"',
            '"${var.validation_min_rsquared}"')
    problems = check_bundle(bundle_copy)
    assert any("taxi_fares_training.yml: resources.jobs.taxi_fares_training.parameters" in problem
               and "${var.validation_min_rsquared} is not declared; add 'validation_min_rsquared' under "
                   "'variables' in databricks.yml" in problem for problem in problems), problems


def test_a_variable_without_a_value_in_a_target_is_named(bundle_copy):
    rewrite(bundle_copy / "databricks.yml", "      catalog: staging\n", "")
    problems = check_bundle(bundle_copy)
    assert any("databricks.yml: targets.staging.variables: no value for variable 'catalog', which has no "
               "default; set it there or give the variable a default" in problem for problem in problems)
    with pytest.raises(BundleError, match="variable 'catalog' has no value for target 'staging': set "
                                          "targets.staging.variables.catalog"):
        load_bundle(bundle_copy, "staging")


def test_a_reference_to_a_missing_resource_is_named(bundle_copy):
    rewrite(bundle_copy / "databricks_jobs/taxi_fares_batch_scoring.yml", "${resources.volumes.raw.name}",
            "${resources.volumes.landing.name}")
    problems = check_bundle(bundle_copy)
    assert any("taxi_fares_batch_scoring.yml: resources.jobs.taxi_fares_batch_scoring.parameters[3].default: "
               "${resources.volumes.landing.name} refers to resources.volumes.landing, which no file defines "
               "(volumes: checkpoints, online_store, published, raw)" in problem
               for problem in problems), problems


def test_a_reference_to_a_field_the_resource_does_not_set_is_named(bundle_copy):
    rewrite(bundle_copy / "databricks_jobs/taxi_fares_batch_scoring.yml", "${resources.volumes.raw.name}",
            "${resources.volumes.raw.volume_name}")
    assert any("resources.volumes.raw does not set 'volume_name'" in problem
               for problem in check_bundle(bundle_copy))


def test_a_missing_notebook_is_named(bundle_copy):
    (bundle_copy / "orchestrator" / "taxi_fares_merge_labels.py").unlink()
    problems = check_bundle(bundle_copy, ["dev"])
    assert any(problem.startswith("target dev: ") and
               "resources.jobs.taxi_fares_batch_scoring.tasks[1].notebook_task.notebook_path: "
               "../orchestrator/taxi_fares_merge_labels.py does not exist" in problem for problem in problems)


def test_missing_wheels_are_named_with_the_build_command(bundle_copy):
    shutil.rmtree(bundle_copy / "dist")
    problems = check_bundle(bundle_copy, ["dev"])
    assert any("artifacts.taxi_fares_wheels.files[0].source: no file matches dist/taxi_fares-*.whl" in problem
               and "build the wheels first (python setup.py wheels)" in problem for problem in problems)


def test_a_parameter_the_notebook_reads_but_the_job_lacks_is_named(bundle_copy):
    rewrite(bundle_copy / "databricks_jobs/taxi_fares_monitoring.yml",
            '        - {name: psi_threshold, default: "0.2"}\n', "")
    problems = check_bundle(bundle_copy, ["prod"])
    assert any(problem.startswith("target prod: ") and "notebook taxi_fares_monitor.py reads parameter "
               "'psi_threshold' (MonitoringConfig), which the job does not declare; add "
               "{name: psi_threshold, default: ...} to the job's parameters" in problem
               for problem in problems)


def test_a_parameter_the_notebook_would_reject_is_named(bundle_copy):
    rewrite(bundle_copy / "databricks_jobs/taxi_fares_training.yml", "      parameters:\n",
            "      parameters:\n        - {name: learning_rate, default: \"0.3\"}\n")
    problems = check_bundle(bundle_copy, ["dev"])
    assert any("the job passes parameter 'learning_rate' to every task, and taxi_fares_train.py "
               "(TrainingConfig) rejects it" in problem for problem in problems), problems


def test_a_run_job_task_must_start_a_job_of_the_bundle(bundle_copy):
    rewrite(bundle_copy / "databricks_jobs/taxi_fares_monitoring.yml",
            "${resources.jobs.taxi_fares_training.id}", "${resources.jobs.taxi_fares_train.id}")
    problems = check_bundle(bundle_copy, ["dev"])
    assert any("refers to resources.jobs.taxi_fares_train, which no file defines" in problem
               for problem in problems), problems
    with pytest.raises(JobError, match="task 'retrain' starts a job that does not exist: the bundle in .* "
                                       "has no job 'taxi_fares_train'"):
        bundle_job("taxi_fares_monitoring", "dev", root=bundle_copy)


def test_a_yaml_syntax_error_names_the_file_and_line(bundle_copy):
    rewrite(bundle_copy / "databricks_jobs/taxi_fares_catalog.yml", "  volumes:\n", "  volumes: [\n")
    with pytest.raises(BundleError, match=r"taxi_fares_catalog.yml line \d+: not valid YAML"):
        load_bundle(bundle_copy, "dev")


def test_a_resource_defined_twice_is_refused(bundle_copy):
    shutil.copy(bundle_copy / "databricks_jobs/taxi_fares_catalog.yml",
                bundle_copy / "databricks_jobs/taxi_fares_catalog_copy.yml")
    with pytest.raises(BundleError, match="taxi_fares_catalog_copy.yml: resources.schemas.taxi_fares is also "
                                          "defined in .*taxi_fares_catalog.yml; a resource is defined once"):
        load_bundle(bundle_copy, "dev")


def test_an_unknown_target_or_variable_is_refused_with_the_valid_names():
    with pytest.raises(BundleError, match=r"no target 'qa' \(targets: dev, staging, prod\); pass one of them "
                                          "with --target"):
        load_bundle(REPO_ROOT, "qa")
    with pytest.raises(BundleError, match="--var catalogue: not a variable of the bundle in .*"
                                          r"\(variables: .*catalog, .*\)"):
        load_bundle(REPO_ROOT, "dev", {"catalogue": "x"})


def test_variables_resolve_as_the_cli_resolves_them(monkeypatch):
    dev = bundle_job("taxi_fares_training", root=REPO_ROOT)
    assert dev.run_command == "mlops job run taxi_fares_training --target dev"
    assert dev.parameters["registered_model_name"] == "dev.taxi_fares.taxi_fares_model"
    assert dev.parameters["taxi_fares_raw_data"] == "/Volumes/dev/taxi_fares/raw/trips"
    assert dev.parameters["wheel_path"] == f"{REPO_ROOT}/dist"
    prod = load_bundle(REPO_ROOT, "prod")
    training = prod.job_settings("taxi_fares_training")
    assert training["job_clusters"][0]["new_cluster"]["autoscale"] == {"min_workers": 2, "max_workers": 8}
    assert training["email_notifications"]["on_failure"] == ["ml-oncall@contoso.com"]
    assert training["tasks"][-1]["email_notifications"]["on_start"] == ["ml-approvers@contoso.com"]
    assert training["schedule"]["pause_status"] == "UNPAUSED"
    given = bundle_job("taxi_fares_training", "staging", root=REPO_ROOT, variables={"catalog": "qa"})
    assert given.parameters["table_location"] == "qa.taxi_fares"
    monkeypatch.setenv("BUNDLE_VAR_catalog", "sandbox")
    assert bundle_job("taxi_fares_training", "staging", root=REPO_ROOT).parameters["table_location"] == \
        "sandbox.taxi_fares"


def test_the_monitoring_job_s_retraining_starts_the_bundle_s_training_job():
    monitoring = bundle_job("taxi_fares_monitoring", "staging", root=REPO_ROOT)
    (retrain,) = [task for task in monitoring.tasks if task.run_job]
    assert retrain.run_job[0] == "taxi_fares_training"
    training = monitoring.other_job(retrain.run_job[0])
    assert training.path == REPO_ROOT / "databricks_jobs" / "taxi_fares_training.yml"
    assert training.parameters["training_data_start_date"] == "{{job.start_time.iso_date}}-28d"


def test_the_serverless_option_drops_the_job_clusters_only_when_asked():
    from databricks.bundles.core import Bundle
    from databricks.bundles.jobs import Job

    spec = importlib.util.spec_from_file_location("compute", REPO_ROOT / "databricks_jobs" / "compute.py")
    compute_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compute_module)
    serverless_notebook_tasks = compute_module.serverless_notebook_tasks
    settings = load_bundle(REPO_ROOT, "prod").resources("jobs")
    for compute in ("classic", "serverless"):
        bundle = Bundle(target="prod", variables={"compute": compute})
        jobs = {key: serverless_notebook_tasks.function(bundle, Job.from_dict(job))
                for key, job in settings.items()}
        scoring = jobs["taxi_fares_batch_scoring"]
        if compute == "serverless":
            assert scoring.job_clusters == [] and {task.job_cluster_key for task in scoring.tasks} == {None}
        else:
            assert {task.job_cluster_key for task in scoring.tasks} == {"taxi_fares_cluster"}
        # The Nutter job installs a cluster library, which serverless notebook tasks cannot take.
        assert jobs["taxi_fares_integration_tests"].tasks[0].job_cluster_key == "taxi_fares_cluster"


def readme_target_rows():
    """variable -> {target: value shown} from the README's 'What each target gets' table."""
    text = (REPO_ROOT / "README.md").read_text()
    body = text[text.index("### What each target gets\n"):]
    body = body[:body.index("\n### ", 1)]
    header, *rows = [line for line in body.splitlines() if line.startswith("|")]
    targets = [cell.strip() for cell in header.strip("|").split("|")[1:]]
    shown = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        names = [name for name in re.findall(r"`([^`]*)`", cells[0]) if re.fullmatch(r"\w+", name)]
        if not names or names == ["job_cluster"]:
            continue
        for target, cell in zip(targets, cells[1:]):
            parts = [part.strip() for part in cell.split(", ")]
            values = ["" if part == "empty" else [] if part == "none" else re.fullmatch(r"`(.*)`", part)[1]
                      for part in parts]
            for name, value in zip(names, values, strict=True):
                shown.setdefault(name, {})[target] = value
    return shown


def test_the_readme_target_table_shows_each_target_s_values():
    shown = readme_target_rows()
    assert len(shown) >= 15, sorted(shown)
    for target in TARGETS:
        variables = load_bundle(REPO_ROOT, target).config["variables"]
        for name, values in shown.items():
            actual = variables[name]
            expected = values[target]
            assert (actual if isinstance(actual, list) else str(actual)) == \
                ([expected] if isinstance(actual, list) and expected else expected), (target, name)


def test_mlops_bundle_check_prints_each_problem_and_fails(bundle_copy, capsys):
    from mlops.cli import main

    (bundle_copy / "orchestrator" / "taxi_fares_monitor.py").unlink()
    assert main(["bundle", "check", "--target", "dev", "--root", str(bundle_copy)]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("problem: target dev: ")
    assert "../orchestrator/taxi_fares_monitor.py does not exist" in captured.out
    assert captured.err.strip() == f"error: the bundle in {bundle_copy} has 1 problem(s); see above"
