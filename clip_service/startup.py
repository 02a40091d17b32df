"""How a process of the service refuses to start: one line on stderr, an exit status that says why.

Every entry point calls these instead of letting an exception escape, so an
operator reads the cause on the last line of the log, not a traceback:
``gunicorn.conf.py`` and any command (e.g. a bulk job) call
``settings_or_exit()`` before anything else; ``wsgi.py`` calls ``app_or_exit()``.
This module imports neither torch nor prometheus_client (``gunicorn.conf.py``
reads the settings before either may be imported).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Mapping, NoReturn, TextIO

from .config import ConfigError, Settings

if TYPE_CHECKING:
    from flask import Flask

# The weights cannot be loaded (no file, no network to the model hub, no CUDA):
# a restart may succeed once the file or the network is there.
EXIT_MODEL_LOAD = 3
# A setting is invalid: no restart can help until the configuration changes.
# 78 is EX_CONFIG of sysexits.h, which supervisors know (systemd's
# RestartPreventExitStatus=78); it is neither Gunicorn's own 1 nor the 3 its
# master exits with when a worker fails to boot.
EXIT_BAD_SETTINGS = 78


def refusal_line(reason: object) -> str:
    """``clip-service cannot start: <reason>`` on one line, whatever the reason holds."""
    return "clip-service cannot start: " + " ".join(str(reason).splitlines())


def refuse_to_start(reason: object, status: int, stream: TextIO | None = None) -> NoReturn:
    """Print ``refusal_line(reason)`` and exit with ``status``."""
    print(refusal_line(reason), file=stream or sys.stderr, flush=True)
    # SystemExit, not os._exit: Gunicorn's config loader catches Exception only, so this
    # leaves through it without its "Failed to read config file" and traceback.
    sys.exit(status)


# The settings this process read from os.environ, once: gunicorn.conf.py reads them in the
# master before it imports the app, and the app (wsgi.py) takes the same object.
_read_from_environment: Settings | None = None


def settings_or_exit(environ: Mapping[str, str] | None = None, stream: TextIO | None = None) -> Settings:
    """The settings of ``environ`` (os.environ), or every bad one on one line and exit EXIT_BAD_SETTINGS."""
    global _read_from_environment
    if environ is None and _read_from_environment is not None:
        return _read_from_environment
    try:
        settings = Settings.from_env(environ)
    except ConfigError as exc:
        refuse_to_start(exc, EXIT_BAD_SETTINGS, stream)
    if environ is None:
        _read_from_environment = settings
    return settings


def app_or_exit() -> "Flask":
    """The app of ``create_app()`` (with the settings already read, if any), or one line and an exit status."""
    from .app import create_app
    from .model.errors import ModelLoadError, UnsupportedModelError

    try:
        return create_app(settings=_read_from_environment)
    except (ConfigError, UnsupportedModelError) as exc:  # a model the service does not serve is a setting to change
        refuse_to_start(exc, EXIT_BAD_SETTINGS)
    except ModelLoadError as exc:
        # A short reason and a non-zero exit beat a traceback or, worse, random weights.
        refuse_to_start(exc, EXIT_MODEL_LOAD)
