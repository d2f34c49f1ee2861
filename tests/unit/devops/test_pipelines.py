"""Azure DevOps pipelines: valid against the official schema, and wired the way the project needs."""
import json
import re
from pathlib import Path

import pytest
import yaml

from .conftest import REPO_ROOT

# The official schema (MIT, from the Azure Pipelines VS Code extension), vendored with its licence.
SCHEMA = REPO_ROOT / "tests" / "schemas" / "azure-pipelines.schema.json"
PIPELINES = sorted((REPO_ROOT / "devops").rglob("*.yml"))


@pytest.fixture(scope="module")
def validator():
    import jsonschema

    return jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))


def load(path):
    return yaml.safe_load(Path(path).read_text())


def deepest_errors(validator, document):
    """The innermost schema errors, the ones that say what is wrong, as 'path: message'."""
    def leaves(error):
        if not error.context:
            yield error
        for child in error.context:
            yield from leaves(child)
    found = [leaf for error in validator.iter_errors(document) for leaf in leaves(error)]
    depth = max((len(error.absolute_path) for error in found), default=0)
    return sorted({f"{list(error.absolute_path)}: {error.message[:200]}"
                   for error in found if len(error.absolute_path) == depth})


def steps_of(document):
    """Every step in a pipeline or template, however deeply nested."""
    if isinstance(document, dict):
        for key, value in document.items():
            if key == "steps" and isinstance(value, list):
                yield from value
            else:
                yield from steps_of(value)
    elif isinstance(document, list):
        for item in document:
            yield from steps_of(item)


def test_the_pipelines_exist():
    names = {path.relative_to(REPO_ROOT / "devops").as_posix() for path in PIPELINES}
    assert {"ci.yml", "cd.yml"} <= names
    assert any(name.startswith("templates/") for name in names)


@pytest.mark.parametrize("path", PIPELINES, ids=lambda path: path.relative_to(REPO_ROOT).as_posix())
def test_pipeline_is_valid_against_the_official_schema(validator, path):
    assert deepest_errors(validator, load(path)) == []


def test_the_schema_check_catches_a_broken_pipeline(validator):
    broken = {"trigger": ["main"], "steps": [{"script": "make test", "displayNme": "typo"}]}
    errors = deepest_errors(validator, broken)
    assert any("displayNme" in error for error in errors)


def tasks(document):
    return {step["task"]: step for step in steps_of(document) if "task" in step}


def test_ci_runs_on_main_and_pull_requests_with_the_tools_the_tests_need():
    ci = load(REPO_ROOT / "devops" / "ci.yml")
    assert ci["trigger"]["branches"]["include"] == ["main"]
    assert ci["pr"]["branches"]["include"] == ["main"]
    assert ci["pool"] == {"vmImage": "ubuntu-latest"}
    found = tasks(ci)
    variables = {variable["name"]: variable["value"] for variable in ci["variables"]}
    assert found["UsePythonVersion@0"]["inputs"]["versionSpec"] in ("3.11", "$(PYTHON_VERSION)")
    assert variables["PYTHON_VERSION"] == "3.11"
    assert found["JavaToolInstaller@0"]["inputs"]["versionSpec"] == "17"
    assert found["NodeTool@0"]["inputs"]["versionSpec"].startswith("20")


def test_ci_tests_builds_labelled_wheels_and_publishes_results_and_the_artifact():
    ci = load(REPO_ROOT / "devops" / "ci.yml")
    scripts = [step["script"] for step in steps_of(ci) if "script" in step]
    test_step = next(step for step in steps_of(ci) if step.get("script") == "make test")
    assert "--junitxml=" in test_step["env"]["PYTEST_ADDOPTS"]
    assert any("setup.py wheels" in script for script in scripts)
    label = {variable["name"]: variable["value"] for variable in ci["variables"]}["WHEEL_BUILD_LABEL"]
    # The label must stay letters and digits once Azure substitutes the build id.
    assert re.fullmatch(r"[A-Za-z0-9]+", label.replace("$(Build.BuildId)", "123"))
    found = tasks(ci)
    assert found["PublishTestResults@2"]["inputs"]["testResultsFormat"] == "JUnit"
    assert found["PublishTestResults@2"]["condition"] == "succeededOrFailed()"
    contents = found["CopyFiles@2"]["inputs"]["Contents"]
    for needed in ("dist/*.whl", "databricks.yml", "orchestrator/**", "databricks_jobs/**",
                   "tests/nutter/**"):
        assert needed in contents
    assert found["PublishPipelineArtifact@1"]["inputs"]["artifact"] == "drop"


def test_cd_deploys_staging_then_prod_after_ci_with_the_same_wheel_version():
    cd = load(REPO_ROOT / "devops" / "cd.yml")
    assert cd["trigger"] == "none" and cd["pr"] == "none"
    (resource,) = cd["resources"]["pipelines"]
    assert resource["pipeline"] == "ci" and resource["trigger"]
    variables = {variable["name"]: variable["value"] for variable in cd["variables"]}
    assert variables["WHEEL_BUILD_LABEL"] == "b$(resources.pipeline.ci.runID)"
    ci_variables = {variable["name"]: variable["value"] for variable in load(REPO_ROOT / "devops" / "ci.yml")
                    ["variables"]}
    assert ci_variables["WHEEL_BUILD_LABEL"] == "b$(Build.BuildId)"
    stages = cd["stages"]
    assert [stage["stage"] for stage in stages] == ["staging", "prod"]
    assert [stage.get("dependsOn") for stage in stages] == [None, "staging"]
    for stage in stages:
        assert stage["variables"] == [{"group": f"taxi-fares-{stage['stage']}"}]
        (job,) = stage["jobs"]
        assert job["template"] == "templates/bundle-deploy.yml"
        assert job["parameters"]["target"] == stage["stage"]
        assert job["parameters"]["azureDevOpsEnvironment"] == f"taxi-fares-{stage['stage']}"
        assert job["parameters"]["serviceConnection"] == f"taxi-fares-{stage['stage']}"
        assert (REPO_ROOT / "devops" / job["template"]).exists()
    tests_run = {stage["stage"]: stage["jobs"][0]["parameters"]["runIntegrationTests"] for stage in stages}
    assert tests_run == {"staging": True, "prod": False}


def script_of(step):
    return step.get("script") or step.get("inputs", {}).get("inlineScript", "")


def test_the_deployment_template_installs_the_cli_then_validates_deploys_and_runs_the_tests():
    template = load(REPO_ROOT / "devops" / "templates" / "bundle-deploy.yml")
    (job,) = template["jobs"]
    # A deployment job: the Azure DevOps environment's approvals gate it.
    assert job["environment"] == "${{ parameters.azureDevOpsEnvironment }}"
    scripts = [script_of(step) for step in steps_of(template)]
    install = next(script for script in scripts if "setup-cli" in script)
    release = "https://raw.githubusercontent.com/databricks/setup-cli/v$(DATABRICKS_CLI_VERSION)/install.sh"
    assert release in install
    deploy = next(script for script in scripts if "bundle deploy" in script)
    assert deploy.index("databricks bundle validate -t ${{ parameters.target }}") < \
        deploy.index("databricks bundle deploy -t ${{ parameters.target }}")
    run = next(step for step in steps_of(template) if "bundle run" in script_of(step))
    assert script_of(run) == "databricks bundle run taxi_fares_integration_tests -t ${{ parameters.target }}"
    assert "parameters.runIntegrationTests" in run["condition"]
    assert scripts.index(install) < scripts.index(deploy) < scripts.index(script_of(run))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda path: path.relative_to(REPO_ROOT).as_posix())
def test_databricks_steps_sign_in_through_the_service_connection_and_no_token_is_stored(path):
    document = load(path)
    assert "DATABRICKS_TOKEN" not in json.dumps(document.get("variables", [])), "a stored token variable"
    for step in steps_of(document):
        script = script_of(step)
        if re.search(r"databricks (bundle|registered-models)", script):
            # Workload identity federation: the service connection signs the Azure CLI in.
            assert step["task"] == "AzureCLI@2"
            assert step["inputs"]["azureSubscription"] == "${{ parameters.serviceConnection }}"
            assert step["env"]["DATABRICKS_HOST"] == "$(DATABRICKS_HOST)"
            assert step["env"]["DATABRICKS_AUTH_TYPE"] == "azure-cli"
        assert "DATABRICKS_TOKEN" not in script and "DATABRICKS_CLIENT_SECRET" not in script
