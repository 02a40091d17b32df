"""Errors told in one message, for the API shapes that have no field-by-field or per-item errors (OpenAI, Weaviate).

Both walk marshmallow's nested error dict to paths such as ``input[3]``, and
both fail the whole request when one image fails (neither can answer in part),
naming each failed image; this module does each once.
"""

from __future__ import annotations

from ..pipeline import ItemFailure
from .errors import ApiError

# At most this many failed images or invalid fields are described in one message.
MAX_DESCRIBED = 5


def field_errors(errors: dict, path: str = "") -> list[tuple[str, list]]:
    """Each field error of a marshmallow error dict, in order, as (path such as "input[3]", its messages).

    A rule across fields (``_schema``) has the path of the object it checks:
    "" for the body itself.
    """
    found: list[tuple[str, list]] = []
    for key, value in errors.items():
        if key == "_schema":
            name = path
        elif str(key).isdigit():
            name = f"{path}[{key}]"
        else:
            name = f"{path}.{key}" if path else str(key)
        if isinstance(value, dict):
            found.extend(field_errors(value, name))
        else:
            found.append((name, value if isinstance(value, list) else [value]))
    return found


def at_most_described(parts: list[str]) -> list[str]:
    """``parts`` up to MAX_DESCRIBED of them, then how many more there are."""
    if len(parts) <= MAX_DESCRIBED:
        return parts
    return parts[:MAX_DESCRIBED] + [f"and {len(parts) - MAX_DESCRIBED} more"]


def image_failure(failures: list[ItemFailure], field: str, *, lead: str,
                  messages: dict[str, str] | None = None) -> ApiError:
    """A 400 naming each failed image as ``field[i]: message (code)``; ``param`` and ``code`` are the first's.

    ``messages`` rewords a failure code in the API's own terms.
    """
    messages = messages or {}
    parts = [f"{field}[{f.index}]: {messages.get(f.error.code, f.error.message)} ({f.error.code})" for f in failures]
    first = failures[0]
    return ApiError(400, lead + "; ".join(at_most_described(parts)), param=f"{field}[{first.index}]",
                    code=first.error.code)
