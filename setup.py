"""Builds the two wheels of the project from one place.

``python setup.py wheels`` builds both into ``dist/``:

* ``taxi_fares`` (the ML wheel, from ``ml_source/``);
* ``taxi_fares_mlops`` (the MLOps wheel, from ``ml_ops/``).

Both share one version: the base in ``VERSION`` plus a build label that is
unique per build, so a cluster never reuses a stale wheel of the same name.
Set ``WHEEL_BUILD_LABEL`` to pin the label (CI passes its build id).
"""
import datetime
import os
import pathlib
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = pathlib.Path(__file__).resolve().parent
TARGET_ENV = "WHEEL_TARGET"
LABEL_ENV = "WHEEL_BUILD_LABEL"

# Databricks Runtime ML ships these; forcing them would replace the cluster's copies.
RUNTIME_PROVIDED = {
    "pyspark": "pyspark>=4.1",
    "pandas": "pandas>=2.0,<3",
    "numpy": "numpy>=1.26",
    "lightgbm": "lightgbm>=4.0",
    "mlflow": "mlflow>=3.8,<4",
    "scikit-learn": "scikit-learn>=1.3",
    "scipy": "scipy>=1.10",
    "matplotlib": "matplotlib>=3.7",
    "databricks-sdk": "databricks-sdk>=0.50,<1",
    # The local runner reads the bundle's YAML.
    "pyyaml": "PyYAML>=6",
    # Job configuration (MLflow depends on it too).
    "pydantic": "pydantic>=2.5,<3",
    "optuna": "optuna>=4.2,<5",
}


def _runtime(*names):
    return [RUNTIME_PROVIDED[name] for name in names]


def build_version():
    base = (ROOT / "VERSION").read_text().strip()
    label = os.environ.get(LABEL_ENV) or datetime.datetime.now(
        datetime.timezone.utc).strftime("b%Y%m%d%H%M%S")
    if not re.fullmatch(r"[A-Za-z0-9]+", label):
        raise SystemExit(f"{LABEL_ENV} must be letters and digits only, got {label!r}")
    return f"{base}+{label}"


def _wheel(name, description, source, install_requires, local_extra, **extra):
    """One wheel of the project: its packages come from one source folder."""
    return dict(name=name, description=description, package_dir={"": source},
                packages=find_packages(source), install_requires=install_requires,
                extras_require={"local": _runtime(*local_extra)}, **extra)


def distribution(target, version):
    if target == "ml":
        return _wheel("taxi_fares",
                      "NYC taxi fare model: schema, data generator, features, training, evaluation",
                      "ml_source", [], ("pyspark", "pandas", "numpy", "lightgbm"))
    if target == "ops":
        return _wheel("taxi_fares_mlops",
                      "Stage logic, job config, registry lifecycle and local Databricks runtime", "ml_ops",
                      [f"taxi_fares=={version}", "azure-monitor-opentelemetry>=1.8,<2",
                       # The second telemetry backend (telemetry_backend=opencensus).
                       "opencensus-ext-azure>=1.1.9,<2",
                       "azure-storage-blob>=12.19,<13", "prometheus-client>=0.20,<1",
                       # `mlops serve`: a Starlette app on uvicorn.
                       "starlette>=0.40,<1", "uvicorn>=0.30,<1",
                       # uvicorn's C HTTP parser and event loop: about 1.5x the requests of h11 and asyncio.
                       "httptools>=0.6", "uvloop>=0.19; sys_platform != 'win32'",
                       # The serving request log's writer; the runtime ships no delta-rs.
                       "deltalake>=1.6,<2",
                       # The serving journal: arrays and datetimes to JSON in C, without copies.
                       "orjson>=3.10,<4",
                       # Local and serving locks (flock on POSIX, msvcrt on Windows).
                       "filelock>=4.2,<5"],
                      ("pyspark", "pandas", "numpy", "lightgbm", "mlflow", "scikit-learn", "scipy",
                       "matplotlib", "databricks-sdk", "pyyaml", "pydantic", "optuna"),
                      entry_points={"console_scripts": ["mlops=mlops.cli:main"]})
    raise SystemExit(f"{TARGET_ENV} must be 'ml' or 'ops', got {target!r}")


def build_wheels(dist_dir):
    """Build both wheels with one shared, freshly made version."""
    version = build_version()
    dist_dir.mkdir(exist_ok=True)
    for stale in dist_dir.glob("*.whl"):
        stale.unlink()
    for target in ("ml", "ops"):
        shutil.rmtree(ROOT / "build" / target, ignore_errors=True)
        (ROOT / "build" / target).mkdir(parents=True)
        env = dict(os.environ, **{TARGET_ENV: target, "WHEEL_VERSION": version})
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--quiet", "--wheel-dir", str(dist_dir), str(ROOT)],
            env=env, check=True)
    for wheel in sorted(dist_dir.glob("*.whl")):
        print(wheel)


if __name__ == "__main__" and sys.argv[1:2] == ["wheels"]:
    build_wheels(ROOT / "dist")
    sys.exit(0)

_target = os.environ.get(TARGET_ENV, "")
_version = os.environ.get("WHEEL_VERSION") or build_version()
setup(
    version=_version,
    python_requires=">=3.11",
    options={
        "build": {"build_base": f"build/{_target}"},
        "egg_info": {"egg_base": f"build/{_target}" if _target else None},
    },
    **distribution(_target, _version),
)
