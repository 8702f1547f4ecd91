"""One error root for everything optimem refuses or cannot do. Each class carries the HTTP status
the API answers with, so the API has one exception handler and never matches message text."""
from __future__ import annotations


class OptimemError(Exception):
    """Root of optimem's errors; ``str(exc)`` says what happened and what to fix."""
    status = 500


class BadRequest(OptimemError, ValueError):
    """The caller sent something optimem can't take; the message says what to fix."""
    status = 422


class NotFound(OptimemError, LookupError):
    """No such session, page or group (for this tenant)."""
    status = 404


class SessionExists(OptimemError):
    """A session with that id already exists."""
    status = 409


class ModelUnavailable(OptimemError, RuntimeError):
    """The backend cannot start here; the message names the setting to fix."""
    status = 503
