"""Retries of transient failures (throttling, 5xx, dropped connections) with backoff.

:func:`is_transient` classifies errors from the standard library, requests, urllib3,
azure-core and MLflow without importing any of them: an exception of a library's type can
only exist once that library has been imported, so the classes are looked up in
``sys.modules``.
"""
import functools
import logging
import random
import sys
import time

from mlops.errors import TransientError, exception_chain
from mlops.observability.redaction import redact_text

logger = logging.getLogger(__name__)

DEFAULT_ATTEMPTS = 4
DEFAULT_BASE_DELAY = 0.5
DEFAULT_MAX_DELAY = 8.0

# 408 Request Timeout and 429 Too Many Requests are worth repeating; among the 5xx codes,
# 501 Not Implemented and 505 HTTP Version Not Supported will never change on a retry.
_TRANSIENT_4XX = frozenset({408, 429})
_PERMANENT_5XX = frozenset({501, 505})

_TRANSIENT_MLFLOW_CODES = frozenset({
    "TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED",
})

_TRANSIENT_CLASSES_BY_MODULE = {
    "requests.exceptions": ("ConnectionError", "Timeout", "ChunkedEncodingError", "RetryError"),
    "urllib3.exceptions": (
        "TimeoutError", "ProtocolError", "NewConnectionError", "ResponseError", "IncompleteRead",
    ),
    "azure.core.exceptions": ("ServiceRequestError", "ServiceResponseError"),
    "http.client": ("IncompleteRead", "RemoteDisconnected"),
}


def _loaded_classes(module_name, class_names):
    module = sys.modules.get(module_name)
    if module is None:
        return ()
    return tuple(getattr(module, name) for name in class_names if hasattr(module, name))


def is_transient_status(status_code) -> bool:
    """True for HTTP status codes worth retrying: 408, 429 and 5xx except 501 and 505."""
    try:
        code = int(status_code)
    except (TypeError, ValueError):
        return False
    return code in _TRANSIENT_4XX or (500 <= code <= 599 and code not in _PERMANENT_5XX)


def _http_status(exc):
    """The HTTP status carried by an azure-core or requests error, else None."""
    status = getattr(exc, "status_code", None)
    if status is None:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _mlflow_transient(exc):
    """Classify an MlflowException; None when ``exc`` is not one."""
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")
    if mlflow_exceptions is None or not isinstance(exc, mlflow_exceptions.MlflowException):
        return None
    code = getattr(exc, "error_code", None)
    if code in _TRANSIENT_MLFLOW_CODES:
        return True
    # A RestException carries the server's own verdict; INTERNAL_ERROR there is an HTTP 500.
    # A plain MlflowException defaults to INTERNAL_ERROR for any problem, so only its chain
    # decides (MLflow's HTTP client raises it while handling the network error).
    if isinstance(exc, mlflow_exceptions.RestException) and code == "INTERNAL_ERROR":
        return True
    return any(_is_transient_one(link) for link in exception_chain(exc)[1:])


def _is_transient_one(exc):
    if isinstance(exc, TransientError):
        return True
    mlflow_verdict = _mlflow_transient(exc)
    if mlflow_verdict is not None:
        return mlflow_verdict
    status = _http_status(exc)
    if status is not None:
        return is_transient_status(status)
    urllib3_exceptions = sys.modules.get("urllib3.exceptions")
    if urllib3_exceptions is not None and isinstance(exc, urllib3_exceptions.MaxRetryError):
        return exc.reason is None or is_transient(exc.reason)
    requests_exceptions = sys.modules.get("requests.exceptions")
    if requests_exceptions is not None and isinstance(exc, requests_exceptions.SSLError):
        return False  # a certificate or TLS setup problem does not fix itself
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    for module_name, class_names in _TRANSIENT_CLASSES_BY_MODULE.items():
        classes = _loaded_classes(module_name, class_names)
        if classes and isinstance(exc, classes):
            return True
    return False


def is_transient(exc) -> bool:
    """True when retrying the call that raised ``exc`` may succeed.

    Transient: :class:`~mlops.errors.TransientError`; HTTP 408, 429 and 5xx (except 501 and
    505) from azure-core ``HttpResponseError`` or ``requests.HTTPError``; MLflow errors with
    codes TEMPORARILY_UNAVAILABLE, DEADLINE_EXCEEDED, REQUEST_LIMIT_EXCEEDED,
    RESOURCE_EXHAUSTED, or a RestException with INTERNAL_ERROR; connection drops and
    timeouts from the standard library, requests, urllib3 and azure-core. An exception
    raised ``from`` a transient one is transient too. Everything else (other 4xx including
    401 and 403, ValueError, ...) is permanent.
    """
    return any(_is_transient_one(link) for link in exception_chain(exc))


def _check_policy(attempts, base_delay, max_delay):
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"attempts must be an integer >= 1, got {attempts!r}")
    if base_delay < 0:
        raise ValueError(f"base_delay must be >= 0 seconds, got {base_delay!r}")
    if max_delay < base_delay:
        raise ValueError(f"max_delay ({max_delay!r}) must be >= base_delay ({base_delay!r})")


def backoff_delay(attempt, base_delay=DEFAULT_BASE_DELAY, max_delay=DEFAULT_MAX_DELAY) -> float:
    """Seconds to wait after failed ``attempt`` (1-based): exponential, capped, with jitter.

    The jitter keeps between half and all of the exponential delay, so parallel tasks that
    failed together do not retry in lockstep.
    """
    ceiling = min(max_delay, base_delay * (2 ** (attempt - 1)))
    return ceiling * random.uniform(0.5, 1.0)


def call_with_retry(fn, *args, attempts=DEFAULT_ATTEMPTS, base_delay=DEFAULT_BASE_DELAY,
                    max_delay=DEFAULT_MAX_DELAY, retry_on=is_transient, **kwargs):
    """Call ``fn(*args, **kwargs)``, retrying it while it raises errors ``retry_on`` accepts.

    Makes at most ``attempts`` calls. A permanent error is raised at once; when the attempts
    are used up, the last transient error is raised unchanged. Each retry is logged at
    WARNING with the attempt number, the exception type and its redacted message.
    """
    _check_policy(attempts, base_delay, max_delay)
    name = getattr(fn, "__qualname__", repr(fn))
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not retry_on(exc):
                raise
            if attempt == attempts:
                logger.warning("%s failed on attempt %d of %d with %s: %s; giving up",
                               name, attempt, attempts, type(exc).__name__, redact_text(exc))
                raise
            delay = backoff_delay(attempt, base_delay, max_delay)
            logger.warning("%s failed on attempt %d of %d with %s: %s; retrying in %.2fs",
                           name, attempt, attempts, type(exc).__name__, redact_text(exc), delay)
            time.sleep(delay)


def retry_transient(attempts=DEFAULT_ATTEMPTS, base_delay=DEFAULT_BASE_DELAY,
                    max_delay=DEFAULT_MAX_DELAY, retry_on=is_transient):
    """Decorator form of :func:`call_with_retry`.

    Use as ``@retry_transient()`` or ``@retry_transient(attempts=3)``; a bare
    ``@retry_transient`` applies the defaults.
    """
    if callable(attempts):
        return retry_transient()(attempts)
    _check_policy(attempts, base_delay, max_delay)

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return call_with_retry(fn, *args, attempts=attempts, base_delay=base_delay,
                                   max_delay=max_delay, retry_on=retry_on, **kwargs)
        return wrapper

    return decorate
