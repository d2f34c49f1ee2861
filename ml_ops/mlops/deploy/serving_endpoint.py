"""The Model Serving endpoint's traffic split between its served entities ``champion`` and ``challenger``.

The bundle creates the endpoint (``databricks_jobs/taxi_fares_serving.yml``); a rollout moves
its traffic. A config update replaces the served entities as a whole, so each keeps what the
endpoint has (entity, workload size, scale to zero) and only its version and share change. The
call does not wait for the endpoint to finish updating: that takes minutes, and the endpoint
serves the old config meanwhile.
"""
import dataclasses
import logging

from databricks.sdk.service.serving import Route, ServedEntityInput, ServedEntityOutput, TrafficConfig

from mlops.errors import ConfigError

logger = logging.getLogger(__name__)

CHAMPION_ENTITY = "champion"
CHALLENGER_ENTITY = "challenger"
# What an entity keeps through an update: every setting the endpoint reports that an update takes.
_KEPT = sorted({field.name for field in dataclasses.fields(ServedEntityInput)}
               & {field.name for field in dataclasses.fields(ServedEntityOutput)}
               - {"name", "entity_version"})


def set_traffic(client, endpoint: str, champion_version: str, challenger_version: str,
                challenger_percent: int) -> dict:
    """Serve ``challenger_percent`` of ``endpoint``'s requests from the Challenger; the routes set."""
    if not 0 <= challenger_percent <= 100:
        raise ConfigError(f"a challenger share is from 0 to 100 percent, got {challenger_percent}")
    served = client.serving_endpoints.get(endpoint).config
    entities = {entity.name: entity for entity in (served.served_entities if served else None) or []}
    missing = [name for name in (CHAMPION_ENTITY, CHALLENGER_ENTITY) if name not in entities]
    if missing:
        raise ConfigError(f"serving endpoint '{endpoint}' has no served entity {' or '.join(missing)} "
                          f"(it has {', '.join(sorted(entities)) or 'none'}); deploy the bundle, whose "
                          "endpoint serves both")
    versions = {CHAMPION_ENTITY: str(champion_version), CHALLENGER_ENTITY: str(challenger_version)}
    inputs = [ServedEntityInput(name=name, entity_version=versions[name],
                                **{field: getattr(entities[name], field, None) for field in _KEPT})
              for name in (CHAMPION_ENTITY, CHALLENGER_ENTITY)]
    routes = {CHAMPION_ENTITY: 100 - challenger_percent, CHALLENGER_ENTITY: challenger_percent}
    client.serving_endpoints.update_config(endpoint, served_entities=inputs, traffic_config=TrafficConfig(
        routes=[Route(served_entity_name=name, traffic_percentage=share) for name, share in routes.items()]))
    logger.info("serving endpoint %s: champion version %s on %d%%, challenger version %s on %d%%",
                endpoint, champion_version, routes[CHAMPION_ENTITY], challenger_version,
                challenger_percent)
    return routes
