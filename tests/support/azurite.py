"""A real Azurite blob endpoint on a free loopback port, shared by a test session."""
import pytest

from mlops.local.azurite import AzuriteServer, available


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """A running :class:`~mlops.local.azurite.AzuriteServer`; fails (not skips) when Azurite is missing."""
    if not available():
        pytest.fail("Azurite is not installed (node_modules/.bin/azurite-blob or node not found): "
                    "run `npm ci` in the repository root (`make test` does this)", pytrace=False)
    with AzuriteServer.start(tmp_path_factory.mktemp("azurite")) as server:
        yield server
