"""Connect to a Databricks workspace through databricks-sdk unified authentication.

Whatever the SDK can authenticate with works here: a Databricks OAuth service principal
(machine-to-machine), an Azure service principal with a secret, the Azure CLI (as an Azure
DevOps ``AzureCLI@2`` step with a service connection provides), OIDC workload identity
federation, a profile of ``~/.databrickscfg``, or a personal access token. Credentials are
read from the environment or the profile, never from the command line, and every secret
value is registered for redaction before the first request.
"""
import configparser
import contextlib
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Optional

from mlops.errors import ConfigError, JobError
from mlops.observability.redaction import redact_text, register_secret

HOST_ENV = "DATABRICKS_HOST"
PROFILE_ENV = "DATABRICKS_CONFIG_PROFILE"
CONFIG_FILE_ENV = "DATABRICKS_CONFIG_FILE"
# Reaching the host is checked before the SDK starts, whose own retries last five minutes.
CONNECT_TIMEOUT_SECONDS = 10
# Bounds the SDK's retries of one request (throttling, 5xx), so a sick workspace fails in minutes.
RETRY_TIMEOUT_SECONDS = 120
SECRET_VARIABLES = ("DATABRICKS_TOKEN", "DATABRICKS_CLIENT_SECRET", "ARM_CLIENT_SECRET",
                    "DATABRICKS_AZURE_CLIENT_SECRET", "DATABRICKS_PASSWORD", "DATABRICKS_OIDC_TOKEN")
CREDENTIAL_VARIABLES = ("DATABRICKS_CLIENT_ID", "ARM_TENANT_ID", "ARM_CLIENT_ID", "DATABRICKS_AUTH_TYPE",
                        "DATABRICKS_AZURE_RESOURCE_ID") + SECRET_VARIABLES
AUTH_METHODS = (
    "DATABRICKS_CLIENT_ID + DATABRICKS_CLIENT_SECRET (Databricks OAuth service principal)",
    "ARM_TENANT_ID + ARM_CLIENT_ID + ARM_CLIENT_SECRET (Azure service principal)",
    "`az login` (Azure CLI; an AzureCLI@2 step with a service connection)",
    "DATABRICKS_AUTH_TYPE=azure-devops-oidc or github-oidc + DATABRICKS_CLIENT_ID (workload identity)",
    "--profile NAME (a profile of ~/.databrickscfg)",
    "DATABRICKS_TOKEN (personal access token)",
)


def auth_methods() -> str:
    return "; ".join(AUTH_METHODS)


def _profile_file() -> Path:
    return Path(os.environ.get(CONFIG_FILE_ENV) or Path.home() / ".databrickscfg")


def resolve_host(host: Optional[str] = None, profile: Optional[str] = None) -> str:
    """The workspace URL from ``--host``, ``DATABRICKS_HOST`` or the profile; '' when none says."""
    if host or os.environ.get(HOST_ENV):
        return (host or os.environ[HOST_ENV]).rstrip("/")
    profile = profile or os.environ.get(PROFILE_ENV) or "DEFAULT"
    parser = configparser.ConfigParser(default_section="__none__")
    try:
        parser.read(_profile_file())
    except configparser.Error as error:
        raise ConfigError(f"cannot read {_profile_file()}: {error}") from error
    return parser.get(profile, "host", fallback="").rstrip("/")


def credential_sources() -> list:
    """The credential variables set in this environment, secret values shown redacted."""
    return [f"{name}=[REDACTED]" if name in SECRET_VARIABLES else name
            for name in CREDENTIAL_VARIABLES if os.environ.get(name)]


def check_reachable(host: str, timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
    """Open and close one TCP connection to ``host``; a JobError naming it when that fails."""
    url = urllib.parse.urlsplit(host if "://" in host else f"https://{host}")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            pass
    except OSError as error:
        reason = "no answer within {:g} s".format(timeout) if isinstance(error, TimeoutError) else \
            (error.strerror or str(error))
        raise JobError(f"cannot reach Databricks at {host} ({url.hostname}:{port}: {reason}); check the "
                       f"workspace URL and the network path (proxy, firewall, private link)") from None


def connect(host: Optional[str] = None, profile: Optional[str] = None):
    """A WorkspaceClient for ``host``, authenticated by whatever unified auth finds."""
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.config import Config

    for name in SECRET_VARIABLES:
        register_secret(os.environ.get(name))
    host = resolve_host(host, profile)
    if not host:
        raise ConfigError(f"no Databricks host: pass --host, set {HOST_ENV}, or name a --profile that has "
                          f"one; then authenticate with one of: {auth_methods()}")
    check_reachable(host)
    try:
        client = WorkspaceClient(config=Config(host=host, profile=profile, product="taxi_fares_mlops",
                                               retry_timeout_seconds=RETRY_TIMEOUT_SECONDS))
    except ValueError as error:
        message = str(error)
        if "cannot configure default credentials" in message:
            raise ConfigError(f"no Databricks credentials for {host}; authenticate with one of: "
                              f"{auth_methods()}") from None
        raise ConfigError(f"cannot authenticate to Databricks at {host}: "
                          f"{redact_text(message.split('. Config:')[0])}") from None
    for secret in (client.config.token, client.config.client_secret, client.config.azure_client_secret,
                   client.config.password):
        register_secret(secret)
    return client


def host_of(client) -> str:
    return client.config.host.rstrip("/")


@contextlib.contextmanager
def remote_call(host: str, action: str):
    """Turn a Databricks API error into our hierarchy, naming the host and the action."""
    from databricks.sdk.errors import DatabricksError, PermissionDenied, Unauthenticated

    try:
        yield
    except Unauthenticated as error:
        raise ConfigError(
            f"Databricks at {host} rejected the credentials (HTTP 401) while trying to {action}: "
            f"check that they are valid and unexpired for this workspace") from error
    except PermissionDenied as error:
        raise ConfigError(
            f"Databricks at {host} denied permission (HTTP 403) to {action}: the deploying principal "
            f"needs access to it ({redact_text(error)})") from error
    except DatabricksError as error:
        raise JobError(f"Databricks at {host} failed to {action}: {redact_text(error)}") from error
    except ValueError as error:
        # The SDK fetches OAuth tokens lazily and reports a refused one as a ValueError.
        raise ConfigError(f"Databricks at {host} refused to authenticate while trying to {action}: "
                          f"{redact_text(error)}; check the credentials (one of: {auth_methods()})") from None
