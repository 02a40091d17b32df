"""The one per-item error: why one image gave no vector."""

from __future__ import annotations


class ItemError(Exception):
    """Why one image gave no vector; ``code`` is part of the API, ``message`` is for a person.

    The URL policy, the HTTP client, the decoder and the in-request sources
    raise it to unwind one item's work; the fetcher catches it and hands it
    on as a value, so a failed image is data in the answer, never an
    exception in a view.
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ItemError) and (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def __repr__(self) -> str:
        return f"ItemError({self.code!r}, {self.message!r})"
