"""The stages of a task run as telemetry sees them: a span with its own dimensions."""
from mlops.observability.redaction import REDACTED, is_secret_name, redact_text


class StageFrame:
    def __init__(self, name, span, dimensions):
        self.name = name
        self.span = span
        self.dimensions = dimensions


def span_id_of(span) -> str:
    return f"{span.get_span_context().span_id:016x}"


class StageSpan:
    """What :meth:`Telemetry.span` yields: the stage's name and id, and extra dimensions."""

    def __init__(self, frame):
        self._frame = frame

    @property
    def name(self):
        return self._frame.name

    @property
    def span_id(self):
        return span_id_of(self._frame.span)

    def set_dimensions(self, **dimensions):
        """Add dimensions to this stage's dependency item and to later logs inside it."""
        merge_dimensions(self._frame.dimensions, dimensions)


def merge_dimensions(target, updates):
    for key, value in updates.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value


def as_dimensions(values):
    """customDimensions are strings; secret names and values are redacted."""
    return {
        str(key): REDACTED if is_secret_name(str(key)) else redact_text(value)
        for key, value in values.items() if value is not None
    }
