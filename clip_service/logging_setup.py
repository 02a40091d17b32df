"""Process-wide logging set-up."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str) -> None:
    """Send log records to stderr at ``level``; idempotent."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not any(getattr(h, "_clip_service", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._clip_service = True
        root.addHandler(handler)
