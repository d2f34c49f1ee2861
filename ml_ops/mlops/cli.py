"""The ``mlops`` command line: data, notebooks, jobs and models."""
import argparse
import logging
import sys


def _register_data(subparsers):
    from mlops import datagen

    datagen.register_cli(subparsers)


def _register_local(subparsers):
    from mlops.local.cli import register_cli

    register_cli(subparsers)


def _register_deploy(subparsers):
    from mlops.deploy import register_cli

    register_cli(subparsers)


def _register_model(subparsers):
    from mlops.model_cli import register_cli

    register_cli(subparsers)


REGISTRARS = [_register_data, _register_local, _register_model, _register_deploy]


def build_parser():
    parser = argparse.ArgumentParser(prog="mlops", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for register in REGISTRARS:
        register(subparsers)
    return parser


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "urllib3", "azure", "alembic", "mlflow.store", "opencensus"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from mlops.secrets import install_redaction

    install_redaction()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
