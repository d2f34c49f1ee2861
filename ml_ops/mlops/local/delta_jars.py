"""The Delta Lake jars of local Spark: pinned, fetched once from Maven Central, then cached.

Databricks Runtime ships Delta Lake; a laptop's Spark loads it from these jars.
``delta-spark_4.1_2.13`` 4.4.0 is the newest Delta release built for Spark 4.1.0, the Spark of
Databricks Runtime 18 LTS ML pinned here (Delta 4.1.0 to 4.4.0 all declare Spark 4.1.0).
Only delta-spark and delta-storage are taken: the Delta kernel and Unity Catalog client jars
its POM also lists serve catalog-managed tables, and would put older Jackson, Parquet and
Hadoop jars on Spark's class path.

The cache is ``MLOPS_JARS_DIR`` (default ``~/.cache/mlops/jars``); ``MLOPS_MAVEN_REPOSITORY``
names a mirror of Maven Central. ``python -m mlops.local.delta_jars`` fills the cache.
"""
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from mlops.errors import ConfigError

DELTA_VERSION = "4.4.0"
ARTIFACTS = (("io.delta", "delta-spark_4.1_2.13", DELTA_VERSION),
             ("io.delta", "delta-storage", DELTA_VERSION))
CACHE_ENV = "MLOPS_JARS_DIR"
REPOSITORY_ENV = "MLOPS_MAVEN_REPOSITORY"
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
FETCH_TIMEOUT_SECONDS = 120

# What Databricks Runtime configures for Delta; snapshot state is small here, so few partitions.
SESSION_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.databricks.delta.snapshotPartitions": "2",
}


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser().absolute()
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_home / "mlops" / "jars"


def coordinates(artifact) -> str:
    return ":".join(artifact)


def file_name(artifact) -> str:
    _, name, version = artifact
    return f"{name}-{version}.jar"


def artifact_url(artifact) -> str:
    group, name, version = artifact
    repository = os.environ.get(REPOSITORY_ENV) or MAVEN_CENTRAL
    return f"{repository.rstrip('/')}/{group.replace('.', '/')}/{name}/{version}/{file_name(artifact)}"


def jar_paths() -> list:
    """The cached jars, fetching the missing ones first; a ConfigError says how to fill the cache."""
    folder = cache_dir()
    jars = []
    for artifact in ARTIFACTS:
        jar = folder / file_name(artifact)
        if not jar.is_file():
            _fetch(artifact, jar)
        jars.append(jar)
    return jars


def spark_conf() -> dict:
    """Session settings that load Delta Lake into a local Spark session."""
    return {"spark.jars": ",".join(str(jar) for jar in jar_paths()), **SESSION_CONF}


def _fetch(artifact, jar: Path):
    url = artifact_url(artifact)
    try:
        jar.parent.mkdir(parents=True, exist_ok=True)
        expected = _download(url + ".sha1").decode().split()[0].strip().lower()
        content = _download(url)
    except (OSError, ValueError, IndexError) as error:
        raise _not_fetched(artifact, jar, url, error) from None
    actual = hashlib.sha1(content).hexdigest()
    if actual != expected:
        raise _not_fetched(artifact, jar, url, ValueError(f"its SHA-1 is {actual}, Maven says {expected}"))
    # Written beside the jar and renamed, so an interrupted fetch leaves no partial jar.
    with tempfile.NamedTemporaryFile(dir=jar.parent, prefix=f".{jar.name}.", delete=False) as partial:
        partial.write(content)
    os.replace(partial.name, jar)
    print(f"fetched {coordinates(artifact)} into {jar.parent}", file=sys.stderr)


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_SECONDS) as answer:
        return answer.read()


def _not_fetched(artifact, jar: Path, url: str, error: Exception) -> ConfigError:
    reason = f"HTTP {error.code}" if isinstance(error, urllib.error.HTTPError) else \
        (str(getattr(error, "reason", "")) or str(error) or type(error).__name__)
    return ConfigError(
        f"the Delta Lake jar {coordinates(artifact)} is not in the cache {jar.parent} and could not be "
        f"fetched from {url} ({reason}). Fill the cache by hand: download that file into {jar.parent} "
        f"(or run: mvn dependency:copy -Dartifact={coordinates(artifact)} -DoutputDirectory={jar.parent}), "
        f"or set {REPOSITORY_ENV} to a reachable Maven repository")


def main() -> int:
    try:
        for jar in jar_paths():
            print(jar)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
