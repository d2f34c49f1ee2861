"""``mlops azurite start``: run the Azure Storage emulator by hand, for runs outside ``make demo``."""
import time
from pathlib import Path

from mlops.cli import command
from mlops.errors import PublishError
from mlops.platform import home


def _start(args):
    from mlops.local.interrupts import sigterm_interrupts

    # From the start: SIGTERM while Azurite starts must stop it too.
    with sigterm_interrupts():
        return _serve_until_stopped(args)


def _serve_until_stopped(args):
    from mlops.local.azurite import AzuriteServer

    location = Path(args.location) if args.location else home.mount_root("azurite")
    server = AzuriteServer.start(location, port=args.port)
    try:
        print(f"Azurite blob service on {server.blob_endpoint}, data in {location}; Ctrl-C stops it.")
        print("Jobs publish to it once this is exported in their shell:")
        # The emulator's key is the public development key: printing it opens nothing else.
        print(f"export AZURE_STORAGE_CONNECTION_STRING='{server.connection_string}'", flush=True)
        while server.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping Azurite", flush=True)
        return 0
    finally:
        server.stop()
    raise PublishError(f"Azurite exited on its own; see {server.log_path}")


def register_cli(subparsers):
    """Add ``mlops azurite start``."""
    parser = subparsers.add_parser("azurite", help="run the Azure Storage emulator")
    commands = parser.add_subparsers(dest="azurite_command", required=True)
    start = commands.add_parser("start", help="start Azurite in the foreground and print the connection "
                                              "string to export")
    start.add_argument("--port", type=int, default=10000, help="blob port (default 10000; 0: any free port)")
    start.add_argument("--location", help="data folder (default $MLOPS_HOME/azurite)")
    start.set_defaults(func=command(_start))
