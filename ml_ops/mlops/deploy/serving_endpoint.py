"""``mlops deploy serving``: a Databricks Model Serving endpoint for the Champion, through databricks-sdk.

The endpoint ``<registered model's last name part>-<env>`` serves the version the registry's
``Champion`` alias names (served entity ``champion``). ``--canary-percent N`` also serves the
``Challenger`` (served entity ``challenger``) and routes N% of the traffic to it. The served
version is kept in the endpoint's tag ``champion_version`` and the one before it in
``previous_champion_version``, so ``--rollback`` can set the earlier Champion back. A first
deploy with no registered model or no Champion yet says what to run and creates nothing. An
existing endpoint is updated in place: Databricks keeps the old config serving until the new
one is ready.
"""
import logging
from dataclasses import dataclass

from databricks.sdk.errors import NotFound
from databricks.sdk.service.serving import (EndpointCoreConfigInput, EndpointTag, Route, ServedEntityInput,
                                            TrafficConfig)

from mlops.deploy import jobspec
from mlops.deploy.auth import connect, host_of, remote_call
from mlops.errors import ConfigError

logger = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "Champion", "Challenger"
SERVED_TAG, PREVIOUS_TAG = "champion_version", "previous_champion_version"
WORKLOAD_SIZE = "Small"


@dataclass(frozen=True)
class EndpointPlan:
    name: str
    model: str
    champion: str
    challenger: str | None
    canary_percent: int
    previous: str | None

    def served_entities(self) -> list:
        entities = [ServedEntityInput(name="champion", entity_name=self.model, entity_version=self.champion,
                                      workload_size=WORKLOAD_SIZE, scale_to_zero_enabled=True)]
        if self.challenger:
            entities.append(ServedEntityInput(name="challenger", entity_name=self.model,
                                              entity_version=self.challenger, workload_size=WORKLOAD_SIZE,
                                              scale_to_zero_enabled=True))
        return entities

    def traffic(self) -> TrafficConfig:
        routes = [Route(served_model_name="champion", traffic_percentage=100 - self.canary_percent)]
        if self.challenger:
            routes.append(Route(served_model_name="challenger", traffic_percentage=self.canary_percent))
        return TrafficConfig(routes=routes)

    def tags(self) -> list:
        tags = [EndpointTag(key=SERVED_TAG, value=self.champion)]
        if self.previous and self.previous != self.champion:
            tags.append(EndpointTag(key=PREVIOUS_TAG, value=self.previous))
        return tags

    def summary(self) -> str:
        canary = f", {self.canary_percent}% to Challenger version {self.challenger}" if self.challenger \
            else ""
        share = 100 - self.canary_percent
        return f"endpoint {self.name}: {self.model} version {self.champion} ({share}%){canary}"


def endpoint_name(model_name: str, env: str) -> str:
    return f"{model_name.split('.')[-1].replace('_', '-')}-{env}"


def model_aliases(client, model_name: str, registry_uri: str) -> dict | None:
    """alias -> version of the registered model; None when it is not registered."""
    try:
        if registry_uri == "databricks-uc":
            info = client.registered_models.get(model_name, include_aliases=True)
            return {alias.alias_name: str(alias.version_num) for alias in info.aliases or []}
        answer = client.api_client.do("GET", "/api/2.0/mlflow/registered-models/get",
                                      query={"name": model_name})
    except NotFound:
        return None
    return {alias["alias"]: str(alias["version"]) for alias in answer["registered_model"].get("aliases", [])}


def _tag(endpoint, key: str) -> str | None:
    return next((tag.value for tag in endpoint.tags or [] if tag.key == key), None) if endpoint else None


def plan_endpoint(env: str, model: str, aliases: dict | None, endpoint, canary_percent: int,
                  rollback: bool) -> EndpointPlan:
    """What to serve; ConfigError (and nothing created) when there is nothing to serve yet."""
    if not 0 <= canary_percent <= 50:
        raise ConfigError(f"--canary-percent must be between 0 and 50, got {canary_percent}")
    first_run = f"`mlops deploy trigger --env {env} --job taxi_fares_training --wait`"
    if aliases is None:
        raise ConfigError(f"model '{model}' is not registered in this workspace yet: run {first_run} "
                          "first; no serving endpoint was created")
    if CHAMPION not in aliases:
        raise ConfigError(f"model '{model}' has no {CHAMPION} version yet (aliases: {aliases or 'none'}): "
                          f"run {first_run} and let it promote one; no serving endpoint was created")
    name = endpoint_name(model, env)
    served = _tag(endpoint, SERVED_TAG)
    champion = aliases[CHAMPION]
    if rollback:
        champion = _tag(endpoint, PREVIOUS_TAG)
        if endpoint is None or champion is None:
            raise ConfigError(f"endpoint {name} has no earlier Champion to roll back to (tag {PREVIOUS_TAG})")
    challenger = None
    if canary_percent:
        challenger = aliases.get(CHALLENGER)
        if challenger is None or challenger == champion:
            raise ConfigError(f"--canary-percent {canary_percent} needs a {CHALLENGER} version other than "
                              f"the {CHAMPION} (aliases: {aliases})")
    return EndpointPlan(name, model, champion, challenger, canary_percent, served)


def deploy_serving(env: str, host=None, profile=None, canary_percent: int = 0, rollback: bool = False,
                   jobs_dir=jobspec.DEFAULT_JOBS_DIR) -> EndpointPlan:
    """Create or update the environment's serving endpoint; returns what it now serves."""
    parameters = jobspec.load_environment(env, jobs_dir)["parameters"]
    model, registry_uri = parameters["registered_model_name"], parameters.get("registry_uri", "")
    client = connect(host, profile)
    host = host_of(client)
    with remote_call(host, f"read the aliases of model {model}"):
        aliases = model_aliases(client, model, registry_uri)
    name = endpoint_name(model, env)
    with remote_call(host, f"read serving endpoint {name}"):
        try:
            endpoint = client.serving_endpoints.get(name)
        except NotFound:
            endpoint = None
    plan = plan_endpoint(env, model, aliases, endpoint, canary_percent, rollback)
    if endpoint is None:
        with remote_call(host, f"create serving endpoint {name}"):
            client.serving_endpoints.create_and_wait(
                name, config=EndpointCoreConfigInput(name=name, served_entities=plan.served_entities(),
                                                     traffic_config=plan.traffic()), tags=plan.tags())
    else:
        with remote_call(host, f"update serving endpoint {name}"):
            client.serving_endpoints.update_config_and_wait(name, served_entities=plan.served_entities(),
                                                            traffic_config=plan.traffic())
            client.serving_endpoints.patch(name, add_tags=plan.tags())
    logger.info("%s at %s", plan.summary(), host)
    return plan
