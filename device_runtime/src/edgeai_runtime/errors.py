"""The base of the errors the device runtime raises on purpose.

Every such error carries a stable ``reason`` code (the CLI prints it as ``reason``; callers and
tests match on it, never on the message) and a ``result``: what happened before the failure, for
the caller to report (``changed`` among it when the device did change). ``str()`` says what and
why, naming the thing concerned.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional


class EdgeAIError(Exception):
    """An operation of the device runtime was refused or failed. Subclasses set ``default_reason``."""

    default_reason = "failed"

    def __init__(self, message: str = "", reason: Optional[str] = None,
                 result: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(message)
        self.reason: str = reason or self.default_reason
        self.result: Dict[str, Any] = dict(result or {})
