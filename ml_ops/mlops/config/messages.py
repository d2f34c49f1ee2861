"""Pydantic validation errors as the messages a job's user reads: one line naming the parameter.

The parameter comes from the error's location; the rule from its type, or from the field's
declared choices and bounds; the value is shown unless it holds a secret.
"""
import typing

import annotated_types
from pydantic import ValidationError

from mlops.errors import ConfigError
from mlops.observability.redaction import REDACTED, redact_text

DATE_RULE = ("must be a date as YYYY-MM-DD, optionally shifted by whole days as YYYY-MM-DD-Nd or "
             "YYYY-MM-DD+Nd")


def shown(raw) -> str:
    """A raw value for an error message: quoted, or hidden when it holds a secret."""
    return repr(raw) if redact_text(str(raw)) == str(raw) else REDACTED


# What each kind of validation error says, after "parameter 'name' ".
_TYPE_RULES = {"bool_parsing": "must be true or false", "bool_type": "must be true or false",
               "int_parsing": "must be an integer", "int_type": "must be an integer",
               "int_from_float": "must be an integer", "float_parsing": "must be a number",
               "float_type": "must be a number", "finite_number": "must be a finite number",
               "date_parsing": DATE_RULE, "date_from_datetime_parsing": DATE_RULE,
               "date_type": DATE_RULE, "string_type": "must be text"}
_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bounds_rule(field) -> str:
    """"must be between L and U", "at least L", "above L"... from the field's declared bounds."""
    low = high = None
    for bound in field.metadata:
        if isinstance(bound, (annotated_types.Gt, annotated_types.Ge)):
            low = bound
        elif isinstance(bound, (annotated_types.Lt, annotated_types.Le)):
            high = bound
    if low is not None and high is not None:
        return f"must be between {_number(getattr(low, 'gt', getattr(low, 'ge', None)))} and " \
               f"{_number(getattr(high, 'lt', getattr(high, 'le', None)))}"
    if low is not None:
        rule = f"must be above {_number(low.gt)}" if isinstance(low, annotated_types.Gt) \
            else f"must be at least {_number(low.ge)}"
    else:
        rule = f"must be below {_number(high.lt)}" if isinstance(high, annotated_types.Lt) \
            else f"must be at most {_number(high.le)}"
    return rule + (f" ({field.description})" if field.description else "")


def _message(model, error: dict) -> str:
    """One validation error as a ConfigError message naming the job parameter."""
    kind, location = error["type"], error["loc"]
    if not location:  # a check across parameters: its message already names them
        return str(error.get("ctx", {}).get("error", error["msg"]))
    name = str(location[0])
    field = model.model_fields[name]
    value = shown(error.get("input"))
    if kind == "missing":
        return f"parameter '{name}' is required"
    if kind == "literal_error":
        choices = ", ".join(typing.get_args(field.annotation))
        return f"parameter '{name}' must be one of {choices}, got {value}"
    if kind in _BOUND_ERRORS:
        return f"parameter '{name}' {_bounds_rule(field)}, got {field.annotation(error['input'])}"
    if kind in _TYPE_RULES:
        return f"parameter '{name}' {_TYPE_RULES[kind]}, got {value}"
    cause = error.get("ctx", {}).get("error", error["msg"])
    return f"parameter '{name}' {cause}, got {value}"


def config_error(model, error: ValidationError) -> ConfigError:
    errors = error.errors()
    unknown = sorted(str(item["loc"][0]) for item in errors if item["type"] == "extra_forbidden")
    if unknown:
        return ConfigError(f"unknown parameter(s) {', '.join(unknown)} for {model.__name__}; "
                           f"valid names are: {', '.join(sorted(model.model_fields))}")
    return ConfigError(_message(model, errors[0]))
