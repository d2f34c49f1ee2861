"""Reading a secret from a Databricks secret scope, or from an environment variable."""
import os
from typing import Optional

from mlops.errors import ConfigError
from mlops.observability.redaction import register_secret


def read_secret(dbutils, scope: str, key: str, env_var: str, parameters: tuple) -> Optional[str]:
    """A secret from a Databricks secret scope when ``scope`` and ``key`` are set, else from ``env_var``.

    ``parameters`` names the scope and key parameters for the error message. The value is
    registered for redaction before anything can log it.
    """
    if bool(scope) != bool(key):
        raise ConfigError(f"parameters '{parameters[0]}' and '{parameters[1]}' must be set together, "
                          f"got scope {scope!r} and key name {key!r}")
    value = dbutils.secrets.get(scope, key) if scope else os.environ.get(env_var)
    if value:
        register_secret(value)
    return value or None
