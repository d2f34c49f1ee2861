"""Container, prefix and file names that Azure Blob Storage (and a local folder) accept."""
import re

from mlops.errors import ConfigError

MAX_SEGMENT_CHARS = 255
MAX_BLOB_NAME_CHARS = 1024

_CONTAINER_CHARS = re.compile(r"[a-z0-9-]+")


def validate_container_name(name: str) -> str:
    """Return ``name`` if it is a valid Azure container name, else raise ConfigError naming the rule."""
    if not isinstance(name, str):
        raise ConfigError(f"container name must be a string, got {type(name).__name__}")
    if not 3 <= len(name) <= 63:
        raise ConfigError(f"container name '{name}' is invalid: it must be 3 to 63 characters long, "
                          f"got {len(name)}")
    if not _CONTAINER_CHARS.fullmatch(name):
        bad = sorted({c for c in name if not _CONTAINER_CHARS.fullmatch(c)})
        raise ConfigError(f"container name '{name}' is invalid: only lowercase letters, digits and hyphens "
                          f"are allowed, found {', '.join(repr(c) for c in bad)}")
    if name[0] == "-" or name[-1] == "-":
        raise ConfigError(f"container name '{name}' is invalid: it must start and end with a letter or digit")
    if "--" in name:
        raise ConfigError(f"container name '{name}' is invalid: it must not contain consecutive hyphens")
    return name


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a safe relative blob path like ``scores/daily``, else raise ConfigError."""
    if not isinstance(prefix, str) or not prefix:
        raise ConfigError(f"prefix {prefix!r} is invalid: it must be a non-empty string "
                          "such as 'scores/daily'")
    if "\\" in prefix:
        raise ConfigError(f"prefix '{prefix}' is invalid: it must not contain a backslash; use '/'")
    if prefix.startswith("/"):
        raise ConfigError(f"prefix '{prefix}' is invalid: it must not start with '/'")
    segments = prefix.split("/")
    if "" in segments:
        raise ConfigError(f"prefix '{prefix}' is invalid: it must not contain empty segments "
                          "('//' or a trailing '/')")
    if ".." in segments or "." in segments:
        raise ConfigError(f"prefix '{prefix}' is invalid: it must not contain '..' or '.' segments")
    for segment in segments:
        if len(segment) > MAX_SEGMENT_CHARS:
            raise ConfigError(f"prefix '{prefix}' is invalid: segment '{segment[:20]}...' is {len(segment)} "
                              f"characters long, the limit is {MAX_SEGMENT_CHARS}")
    return prefix


def validate_segment(kind: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{kind} {value!r} is invalid: it must be a non-empty string")
    if "/" in value or "\\" in value:
        raise ConfigError(f"{kind} '{value}' is invalid: it must not contain '/' or '\\'")
    if value in (".", ".."):
        raise ConfigError(f"{kind} '{value}' is invalid: '.' and '..' are not allowed")
    if len(value) > MAX_SEGMENT_CHARS:
        raise ConfigError(f"{kind} '{value[:20]}...' is invalid: it is {len(value)} characters long, "
                          f"the limit is {MAX_SEGMENT_CHARS}")
    return value
