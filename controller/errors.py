"""Errors the core raises; the API maps them to problem+json with the failing field."""

from __future__ import annotations

from typing import Any


def field_path(parts: Any) -> str:
    """A location (keys and list indexes) as a field path: ``rules[2].ports``."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(document)"


class VfenceError(Exception):
    status = 400
    title = "Bad request"

    def __init__(self, reason: str, field: str | None = None):
        super().__init__(f"{field}: {reason}" if field else reason)
        self.reason = reason
        self.field = field


class NotFound(VfenceError):
    status = 404
    title = "Not found"


class Conflict(VfenceError):
    status = 409
    title = "Conflict"


class Forbidden(VfenceError):
    status = 403
    title = "Forbidden"


class Invalid(VfenceError):
    status = 422
    title = "Invalid input"


class Refused(VfenceError, RuntimeError):
    """A switch refused (or failed) the change: it was rolled back everywhere, nothing is
    written; the request may be tried again."""

    status = 503
    title = "A switch refused the change"
