"""Table locations: a folder, or a Unity Catalog schema ``catalog.schema`` whose tables are
``catalog.schema.<table>``. Names are checked here, before any Spark work."""
import re

from mlops.errors import ConfigError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NAMING_RULE = "letters, digits and underscores, not starting with a digit"


def is_schema(location: str) -> bool:
    """True for ``catalog.schema``; a location with a slash or a scheme is a folder."""
    return "/" not in location and ":" not in location


def check_location(location: str, parameter: str = "table_location") -> str:
    """``location`` without surrounding blanks or a trailing slash; a ConfigError when it is neither form."""
    text = (location or "").strip()
    if not is_schema(text):
        return text.rstrip("/") or text
    parts = text.split(".")
    if len(parts) == 2 and all(_IDENTIFIER.match(part) for part in parts):
        return text
    raise ConfigError(f"parameter '{parameter}' must be a folder (dbfs:/..., /Volumes/..., abfss://...) "
                      f"or a Unity Catalog schema written catalog.schema ({NAMING_RULE} in each part), "
                      f"got {text!r}")


def qualified_name(schema: str, table: str) -> str:
    """``catalog.schema.table``, each part checked."""
    return ".".join(split_name(f"{schema}.{table}"))


def split_name(name: str) -> tuple:
    """The three parts of ``catalog.schema.table``; a ConfigError names the part that is not valid."""
    parts = name.split(".")
    if len(parts) != 3:
        raise ConfigError(f"table name {name!r} must have three parts, catalog.schema.table")
    for role, part in zip(("catalog", "schema", "table"), parts):
        if not _IDENTIFIER.match(part):
            raise ConfigError(f"table name {name!r}: the {role} part {part!r} is not a valid Unity Catalog "
                              f"name ({NAMING_RULE})")
    return tuple(parts)
