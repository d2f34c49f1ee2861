"""Secret detection and redaction for parameters, log records and telemetry.

Two complementary checks decide what is secret:

* by **name** (:func:`is_secret_name`): a parameter whose name contains a secret word
  (``key``, ``token``, ``secret``, ``password``, ``connection string``, ``sas``, ...)
  holds a secret value;
* by **value** (:func:`looks_secret`): storage and Application Insights connection strings,
  SAS tokens, Databricks personal access tokens, JWT bearer tokens and long base64 keys are
  recognised wherever they appear.

Values redacted by name, and values passed to :func:`register_secret`, are remembered for
the life of the process, so :func:`redact_text` also removes them from free text such as
log messages and exception texts.
"""
import logging
import re
import threading
from urllib.parse import urlsplit, urlunsplit

from mlops.errors import ConfigError, exception_chain

REDACTED = "***"
# How Databricks shows a value read from a secret scope; the local runtime prints the same.
SECRET_VALUE_MARKER = "[REDACTED]"

MIN_SECRET_LENGTH = 6

# Words that mark a name as holding a secret value. Names are split into words first
# (snake_case, kebab-case, camelCase), so "monkey" or "tokenizer" never match.
_SECRET_WORDS = frozenset({
    "key", "token", "secret", "secrets", "password", "passwd", "pwd", "passphrase", "sas",
    "credential", "credentials", "apikey", "accountkey", "accesskey", "sharedkey", "masterkey",
    "privatekey", "secretkey", "connectionstring", "connstr", "pat", "authorization", "bearer",
    "sig", "cookie",
})
# Adjacent word pairs that together mean a secret, e.g. CONNECTION_STRING or conn_str.
_SECRET_WORD_PAIRS = frozenset({("connection", "string"), ("conn", "str")})
# A final word that makes the name a *reference* to a secret rather than the secret itself:
# "secret_scope" holds a Databricks secret scope name, "secret_key_name" the key's name,
# "private_key_path" a file path, "aws_access_key_id" an identifier.
_REFERENCE_SUFFIXES = frozenset({
    "scope", "scopes", "name", "names", "id", "ids", "path", "file", "env", "var", "type",
    "header", "length", "expiry", "ttl",
})
# Words before "key" that make it a data key (a column), not a credential.
_DATA_KEY_QUALIFIERS = frozenset({
    "primary", "partition", "join", "sort", "foreign", "lookup", "group", "row", "composite",
    "natural", "surrogate", "feature", "index", "cluster", "clustering", "merge", "dedup",
    "timestamp", "lookback", "cache", "dict", "map",
})

_WORD_PATTERN = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")

# Each pattern keeps its "prefix" group and replaces the "secret" group with REDACTED,
# so "AccountKey=abc;" becomes "AccountKey=***;" and the text stays readable.
_SECRET_PATTERNS = (
    # Connection string pairs: Azure Storage, Service Bus/Event Hubs, App Insights, ODBC.
    re.compile(
        r"(?P<prefix>\b(?:AccountKey|SharedAccessKey|SharedAccessSignature|InstrumentationKey"
        r"|Password|Pwd|ClientSecret)\s*=\s*)(?P<secret>[^;\s\"']+)",
        re.IGNORECASE,
    ),
    # SAS query parameters and token-like query parameters in URLs.
    re.compile(
        r"(?P<prefix>(?<![A-Za-z0-9_])(?:sig|access_token|api_key|apikey|client_secret"
        r"|sas_token|token)=)(?P<secret>[^&;\s\"']+)",
        re.IGNORECASE,
    ),
    # user:password@host in URLs.
    re.compile(r"(?P<prefix>://[^:/\s@]+:)(?P<secret>[^@/\s]+)(?=@)"),
    # Authorization: Bearer <token>.
    re.compile(r"(?P<prefix>\bBearer\s+)(?P<secret>[A-Za-z0-9._~+/=-]{16,})", re.IGNORECASE),
    # Databricks personal access tokens: dapi + 32 hex digits, optionally "-<n>".
    re.compile(r"(?P<prefix>)(?P<secret>\bdapi[0-9a-f]{32}(?:-\d+)?)"),
    # JWTs: three base64url parts, the first starting with '{"' encoded as "eyJ".
    re.compile(r"(?P<prefix>)(?P<secret>\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*)"),
    # Long padded base64 keys (storage account keys are 88 characters ending with "==").
    re.compile(r"(?P<prefix>)(?P<secret>(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{38,}={1,2})"),
)

_registry_lock = threading.Lock()
_registered_secrets = set()
# Longest first, so a secret that contains another registered secret is removed whole.
_registered_sorted = ()


def _words(name):
    return [word.lower() for word in _WORD_PATTERN.findall(name)]


def is_secret_name(name) -> bool:
    """True when a parameter called ``name`` holds a secret value.

    The name is split into words. It is secret when it contains a secret word (or the pair
    "connection string"), unless its last word marks it as a reference to a secret
    (``*_scope``, ``*_name``, ``*_id``, ``*_path``, ``<thing>_secret_key``, ...) or "key" is a data
    key such as ``primary_key`` or ``partition_key``.
    """
    if not isinstance(name, str):
        return False
    words = _words(name)
    if not words or words[-1] in _REFERENCE_SUFFIXES:
        return False
    if len(words) > 2 and words[-2:] == ["secret", "key"]:
        # "storage_secret_key" names a key inside a secret scope; only the value read from it is secret.
        return False
    for index, word in enumerate(words):
        previous = words[index - 1] if index else None
        if (previous, word) in _SECRET_WORD_PAIRS:
            return True
        if word == "key" and previous in _DATA_KEY_QUALIFIERS:
            continue
        if word in _SECRET_WORDS:
            return True
    return False


def looks_secret(value) -> bool:
    """True when ``value`` contains a recognisable credential (see the module docstring)."""
    if value is None or isinstance(value, (bool, int, float)):
        return False
    text = value if isinstance(value, str) else str(value)
    return any(pattern.search(text) for pattern in _SECRET_PATTERNS)


def register_secret(value) -> None:
    """Remember ``value`` so that :func:`redact_text` removes it from any text.

    Empty, non-string and short values (fewer than 6 characters) are ignored: redacting
    them would mangle ordinary text.
    """
    global _registered_sorted
    if not isinstance(value, str) or len(value.strip()) < MIN_SECRET_LENGTH:
        return
    with _registry_lock:
        if value in _registered_secrets:
            return
        _registered_secrets.add(value)
        _registered_sorted = tuple(sorted(_registered_secrets, key=len, reverse=True))


def redact_text(text, secret_marker=REDACTED):
    """Return ``text`` with registered secrets and recognisable credentials replaced by ``***``.

    Registered secrets become ``secret_marker``. Non-string values are converted with
    ``str()``; ``None`` is returned unchanged.
    """
    if text is None:
        return None
    if not isinstance(text, str):
        text = str(text)
    for secret in _registered_sorted:
        if secret in text:
            text = text.replace(secret, secret_marker)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda match: match.group("prefix") + REDACTED, text)
    return text


def redact_params(params: dict) -> dict:
    """Return a copy of ``params`` where secret values are replaced by ``***``.

    A value is secret when its key :func:`is_secret_name` or the value :func:`looks_secret`.
    Values secret by name only are also registered, so they are redacted from later free
    text too; the others are found again by their patterns.
    """
    redacted = {}
    for name, value in params.items():
        if value in ("", None):
            # Nothing to hide; showing the empty value tells a reader the setting is unused.
            redacted[name] = value
        elif is_secret_name(name):
            register_secret(value)
            redacted[name] = REDACTED
        elif looks_secret(value) or redact_text(value) != str(value):
            redacted[name] = REDACTED
        else:
            redacted[name] = value
    return redacted


class SecretRedactingFilter(logging.Filter):
    """A logging filter that redacts secrets from a record before any handler formats it.

    The message is formatted with its arguments first and the arguments are cleared, so a
    secret passed as ``%s`` argument is caught too. Exception and stack texts are formatted
    and redacted; the formatter then uses these cached texts. The filter never drops a record.
    """

    _exception_formatter = logging.Formatter()

    def filter(self, record):
        try:
            self._redact(record)
        except Exception as exc:
            # Logging must never fail the caller, and an unredacted record must not go out.
            record.msg = f"[log record withheld: redaction failed with {type(exc).__name__}]"
            record.args = None
            record.exc_info = record.exc_text = record.stack_info = None
        return True

    def _redact(self, record):
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):
            # A malformed format string: keep everything, so the record is not lost.
            message = f"{record.msg} (arguments: {record.args!r})"
        record.msg = redact_text(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exception_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        dimensions = getattr(record, "custom_dimensions", None)
        if isinstance(dimensions, dict):
            record.custom_dimensions = {
                key: REDACTED if is_secret_name(key) else redact_text(value)
                for key, value in dimensions.items()
            }


def install_redaction(logger=None) -> SecretRedactingFilter:
    """Attach one :class:`SecretRedactingFilter` to every handler of ``logger`` (root by default).

    Idempotent: handlers that already carry one are left alone. Handlers added later need
    ``handler.addFilter(filter)`` with the returned filter (or a new instance).
    """
    logger = logger if logger is not None else logging.getLogger()
    installed = SecretRedactingFilter()
    for handler in logger.handlers:
        if not any(isinstance(existing, SecretRedactingFilter) for existing in handler.filters):
            handler.addFilter(installed)
    return installed


def public_uri(uri) -> str:
    """``uri`` without its query string, fragment or ``user:password@``, and with any secret redacted.

    Safe for lineage tags, table metadata and messages: a SAS token or password never survives.
    """
    text = str(uri)
    parts = urlsplit(text)
    if parts.scheme and parts.netloc:
        host = parts.netloc.rsplit("@", 1)[-1] if ":" in parts.netloc.split("@")[0] and "@" in parts.netloc \
            else parts.netloc
        text = urlunsplit((parts.scheme, host, parts.path, "", ""))
    else:
        text = text.split("?", 1)[0].split("#", 1)[0]
    return redact_text(text)


def redacted_exception(error: BaseException, secret_marker=REDACTED) -> BaseException:
    """A copy of ``error`` and its chain whose messages hold no secret; ``error`` itself when clean.

    Each copy keeps its type where it can be rebuilt from a message, its traceback, and its
    plain attributes (strings redacted). Raising ``from`` the copy never exposes the raw chain.
    """
    chain = exception_chain(error)
    if all(redact_text(str(link)) == str(link) for link in chain):
        return error
    copies = [_redacted_copy(link, secret_marker) for link in chain]
    for copy, following in zip(copies, copies[1:]):
        copy.__cause__ = following
        copy.__suppress_context__ = True
    return copies[0]


def _redacted_copy(error: BaseException, secret_marker) -> BaseException:
    message = redact_text(str(error), secret_marker)
    try:
        copy = type(error)(message)
    except Exception:
        copy = RuntimeError(f"{type(error).__name__}: {message}")
    for name, value in vars(error).items():
        if isinstance(value, (str, int, float, bool, type(None))):
            try:
                setattr(copy, name, redact_text(value, secret_marker) if isinstance(value, str) else value)
            except AttributeError:
                continue
    if str(copy) != message:
        # A type whose str() is built from its attributes: fall back to the message alone.
        copy = RuntimeError(f"{type(error).__name__}: {message}")
    copy.__traceback__ = error.__traceback__
    return copy


def parse_connection_string(connection_string: str, what: str) -> dict:
    """Lower-cased key -> value pairs of a ``Name=value;...`` connection string.

    A malformed string is a ConfigError naming ``what``, never quoting the string.
    """
    pairs = {}
    for part in connection_string.strip().split(";"):
        if not part.strip():
            continue
        key, separator, value = part.partition("=")
        if not separator or not key.strip():
            raise ConfigError(f"{what} is malformed: expected 'Name=value' pairs separated by ';' "
                              "(its text is not shown because it holds credentials)")
        pairs[key.strip().lower()] = value.strip()
    return pairs
