"""The ``mlops`` command line: data, notebooks, jobs, models, serving and the bundle check.

This package is the shell: it parses arguments, calls one function, and prints. An error the
command can foresee (a bad parameter, a missing file, an unusable ``MLOPS_HOME``) ends as one
``error:`` line and exit code 1. The redacted traceback follows for a failing notebook cell,
whose cause is the user's code, and for any error when ``MLOPS_DEBUG`` is set.
"""
import argparse
import functools
import logging
import os
import sys
import traceback
from pathlib import Path

from mlops.errors import MlopsError, NotebookError
from mlops.observability.redaction import SECRET_VALUE_MARKER, install_redaction, redact_text
from mlops import platform
from mlops.platform import home

DEBUG_ENV = "MLOPS_DEBUG"
NOISY_LOGGERS = ("py4j", "urllib3", "azure", "alembic", "mlflow.store", "opencensus")


def _register_all(subparsers):
    from mlops.cli import azurite, bundle, data, model, runtime, serve, table

    for module in (data, runtime, model, bundle, azurite, table, serve):
        module.register_cli(subparsers)


def build_parser():
    parser = argparse.ArgumentParser(prog="mlops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _register_all(subparsers)
    return parser


def report(error: BaseException) -> None:
    """One redacted ``error:`` line, then the redacted traceback where it helps (see above)."""
    print(redact_text(f"error: {error}", secret_marker=SECRET_VALUE_MARKER), file=sys.stderr)
    if os.environ.get(DEBUG_ENV) or (isinstance(error, NotebookError) and error.__cause__ is not None):
        text = "".join(traceback.format_exception(error))
        sys.stderr.write(redact_text(text, secret_marker=SECRET_VALUE_MARKER))


def _under_home(error: OSError):
    """The MLOPS_HOME folder when ``error`` is about a path inside it, else None."""
    configured = Path(os.environ.get(home.HOME_ENV) or home.DEFAULT_HOME).expanduser().absolute()
    for name in (error.filename, error.filename2):
        if name and (Path(name).absolute() == configured or configured in Path(name).absolute().parents):
            return configured
    return None


def command(function):
    """Wrap a subcommand: MLflow reads the platform's store (see
    :func:`mlops.platform.mlflow_store_environment`), and a foreseeable error becomes one
    ``error:`` line and exit code 1."""
    @functools.wraps(function)
    def run(args):
        try:
            with platform.mlflow_store_environment():
                return function(args)
        except MlopsError as error:
            report(error)
        except OSError as error:
            folder = _under_home(error)
            report(home.home_problem(error, folder) if folder else error)
        except KeyboardInterrupt as interrupt:
            print(f"error: {interrupt or 'interrupted'}", file=sys.stderr)
            return 143 if "SIGTERM" in str(interrupt) else 130
        return 1
    return run


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_redaction()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
