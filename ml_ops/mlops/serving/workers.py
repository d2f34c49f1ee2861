"""``mlops serve --workers N``: N processes answer on one listening socket, each a whole server.

The parent checks what would fail in every worker (the token rule, the model and its alias, the
address) and binds the socket; uvicorn's supervisor then starts the workers, restarts one that
dies, and on SIGTERM or Ctrl-C stops them all. Each worker builds its own app from the settings
the parent left in :data:`SETTINGS_ENV` (the token travels in :data:`~mlops.serving.server.TOKEN_ENV`,
never in the settings): its own model copy, alias watcher, telemetry and request log, with a
journal of its own, so a worker killed with SIGKILL loses at most its last 50 ms of rows too. ``/metrics`` and
``/health`` describe the worker that answers.
"""
import contextlib
import dataclasses
import json
import logging
import os
from pathlib import Path

from mlops.lifecycle.registry import RegistryClient
from mlops.serving.asgi import create_app
from mlops.serving.server import TOKEN_ENV, listening_socket, require_token_off_loopback
from mlops.serving.start import ServeSettings, build_app, first_model, serving_telemetry, settle_memory

logger = logging.getLogger(__name__)

SETTINGS_ENV = "MLOPS_SERVE_SETTINGS"
_PATHS = ("online_store", "log_table")


def settings_to_environment(settings: ServeSettings) -> None:
    fields = {name: str(value) if isinstance(value, Path) else value
              for name, value in dataclasses.asdict(settings).items() if name != "token"}
    os.environ[SETTINGS_ENV] = json.dumps(fields)
    if settings.token:
        os.environ[TOKEN_ENV] = settings.token


def settings_from_environment() -> ServeSettings:
    fields = json.loads(os.environ[SETTINGS_ENV])
    for name in _PATHS:
        if fields[name] is not None:
            fields[name] = Path(fields[name])
    return ServeSettings(**fields, token=os.environ.get(TOKEN_ENV, ""))


def worker_app():
    """The app one worker serves (uvicorn calls this in each worker process)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from_environment()
    telemetry = serving_telemetry(settings)
    serving, watcher = build_app(settings, telemetry)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        watcher.start()
        settle_memory()
        yield
        watcher.stop()
        if serving.request_log is not None:
            serving.request_log.close()
            logger.info("worker %d stopped; %d request rows logged, %d not logged", os.getpid(),
                        serving.request_log.written, serving.request_log.dropped)
        telemetry.close()

    return create_app(serving, lifespan)


def serve_with_workers(settings: ServeSettings, on_listening) -> None:
    """Serve with ``settings.workers`` processes until SIGTERM or Ctrl-C; ``on_listening(url)`` once bound."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    require_token_off_loopback(settings.host, settings.token)
    first_model(RegistryClient(settings.model_name, settings.registry_uri), settings.alias)
    listener = listening_socket(settings.host, settings.port)
    port = listener.getsockname()[1]
    settings_to_environment(settings)
    config = uvicorn.Config(f"{__name__}:worker_app", factory=True, workers=settings.workers,
                            host=settings.host, port=port, log_config=None, access_log=False,
                            lifespan="on", backlog=2048)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    on_listening(f"http://{host}:{port}")
    try:
        Multiprocess(config, sockets=[listener]).run()
    finally:
        listener.close()
