"""Gunicorn as the worker (``worker.py``) uses it: every name it takes, checked when this module is imported.

``BufferingWorker`` subclasses Gunicorn's gthread worker and reaches into it:
it overrides methods that the base class calls, sets and reads attributes that
are no part of Gunicorn's API, and drives Gunicorn's parser itself. Any
release may rename one (Gunicorn 26.0 has no ``STOP_KEEPALIVE_LINGER`` or
``_cap_keepalive``, and its ``murder_keepalived`` takes no ``force``), and the
worker would then fail at boot with a traceback, or worse, at its first
request. So every such name is listed here with the signature the worker was
written against; the worker imports Gunicorn only through this module, and a
mismatch stops the start with one line naming the Gunicorn version and the
setting that selects Gunicorn's own worker. An upgrade means reading this file.
"""

from __future__ import annotations

import importlib
import inspect

import gunicorn

from ..startup import EXIT_BAD_SETTINGS, refuse_to_start

PINNED = "27.0.1"  # requirements.txt; the names below are checked against it by tests/test_hostile_http.py
STOCK_WORKER = 'GUNICORN_CMD_ARGS="--worker-class gthread"'  # Gunicorn's own worker, without these protections

# Each name the worker imports, overrides or calls, with the signature it assumes (None: only that it exists).
# An override must keep the signature of the method it replaces, which the base class calls.
SIGNATURES: dict[str, str | None] = {
    "gunicorn.SERVER": None,
    "gunicorn.util.http_date": "(timestamp=None)",
    "gunicorn.workers.gthread.STOP_KEEPALIVE_LINGER": None,
    "gunicorn.workers.gthread.TConn": "(cfg, sock, client, server)",
    "gunicorn.workers.gthread.TConn.close": "(self, graceful=False)",
    "gunicorn.workers.gthread.PollableMethodQueue.defer": "(self, callback, *args)",
    "gunicorn.workers.gthread.ThreadWorker": None,
    "gunicorn.workers.gthread.ThreadWorker.check_config": "(cfg, log)",
    "gunicorn.workers.gthread.ThreadWorker.run": "(self)",
    "gunicorn.workers.gthread.ThreadWorker.accept": "(self, listener)",
    "gunicorn.workers.gthread.ThreadWorker.handle": "(self, conn)",
    "gunicorn.workers.gthread.ThreadWorker.handle_request": "(self, req, conn)",
    "gunicorn.workers.gthread.ThreadWorker.finish_request": "(self, conn, fs)",
    "gunicorn.workers.gthread.ThreadWorker.wait_for_and_dispatch_events": "(self, timeout)",
    "gunicorn.workers.gthread.ThreadWorker.murder_keepalived": "(self, force=False)",
    "gunicorn.workers.gthread.ThreadWorker._cap_keepalive": "(self, deadline)",
    "gunicorn.workers.base.Worker.handle_error": "(self, req, client, addr, exc)",
    "gunicorn.http.parser.RequestParser": "(cfg, source, source_addr)",
    "gunicorn.http.unreader.Unreader.read": "(self, size=None, read_ahead=None)",
    "gunicorn.http.message.Request.should_close": "(self)",
    "gunicorn.http.body.Body.read": "(self, size=None)",
    "gunicorn.http.body.ChunkedReader": "(req, unreader)",
}

# Attributes the worker sets or reads, and methods it overrides, by the Gunicorn function that must
# still use them for the worker to work (names the function's code refers to).
USES: dict[str, tuple[str, ...]] = {
    # the connection count, the cap on it, the pools and the loop's wake-up queue
    "gunicorn.workers.gthread.ThreadWorker.__init__": ("tpool", "poller", "method_queue", "nr_conns",
                                                       "worker_connections"),
    # the base loop calls the worker's deadline sweep, its wait and its shutdown cap
    "gunicorn.workers.gthread.ThreadWorker.run": ("murder_keepalived", "_cap_keepalive",
                                                  "wait_for_and_dispatch_events", "nr_conns", "worker_connections"),
    # a thread parses from conn.parser (the buffered request), without waiting when data_ready
    "gunicorn.workers.gthread.ThreadWorker.handle": ("data_ready", "parser", "handle_request", "handle_error"),
    "gunicorn.workers.gthread.TConn.__init__": ("sock", "client", "parser", "data_ready"),
    "gunicorn.http.parser.Parser.__init__": ("unreader",),
    "gunicorn.http.body.Body.__init__": ("reader",),
    # the event loop answers 100 Continue itself and clears this flag so Gunicorn does not answer it again
    "gunicorn.http.wsgi.create": ("_expected_100_continue",),
}

# Gunicorn's status for each error of its parser, as its base.Worker.handle_error answers it (the test compares
# every error class with it), and what to tell the client instead of Gunicorn's message, which quotes what the
# client sent (the request line, a header line). Anything else is a 500. The first match wins.
REFUSALS: tuple[tuple[tuple[str, ...], int, str], ...] = (
    (("InvalidResponseHeader", "InvalidResponseHeaderName"), 500, "internal error"),  # the app's fault
    (("LimitRequestLine",), 414, "the request line is too long"),
    (("LimitRequestHeaders",), 431, "the request's headers are too large"),
    (("ExpectationFailed",), 417, "the only expectation this server meets is 100-continue"),
    (("ForbiddenProxyRequest",), 403, "the PROXY protocol is not allowed from this address"),
    (("UnsupportedTransferCoding",), 501, "this transfer coding is not supported"),
    (("ConfigurationProblem",), 500, "internal error"),
    (("InvalidRequestLine",), 400, "invalid request line"),
    (("InvalidRequestMethod",), 400, "invalid method"),
    (("InvalidHTTPVersion",), 400, "invalid HTTP version"),
    (("InvalidHeaderName",), 400, "invalid header name"),
    (("InvalidHeader",), 400, "invalid header, or invalid framing (Content-Length, Transfer-Encoding)"),
    (("ObsoleteFolding",), 400, "obsolete line folding"),
    (("InvalidProxyLine",), 400, "invalid PROXY line"),
    (("InvalidSchemeHeaders",), 400, "contradictory scheme headers"),
    (("InvalidH2CPreface",), 400, "not an HTTP/2 connection preface"),
    (("InvalidChunkSize",), 400, "invalid chunk size"),
    (("ChunkMissingTerminator",), 400, "chunk data not followed by CRLF"),
    (("InvalidChunkExtension",), 400, "invalid chunk extension"),
)
SIGNATURES.update({f"gunicorn.http.errors.{name}": None for names, _, _ in REFUSALS for name in names})

_MISSING = object()


def _find(dotted: str):
    """The object named ``dotted`` (a module, then attributes), or _MISSING."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            found = getattr(found, attr, _MISSING)
            if found is _MISSING:
                return _MISSING
        return found
    return _MISSING


def signature(obj) -> str:
    """``obj``'s parameters as text, without annotations (a release that adds type hints changes nothing)."""
    sig = inspect.signature(obj)
    return str(sig.replace(parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()],
                           return_annotation=sig.empty))


def problems() -> list[str]:
    """What the installed Gunicorn lacks of what the worker needs (empty for the pinned version)."""
    found = []
    for name, expected in SIGNATURES.items():
        obj = _find(name)
        if obj is _MISSING:
            found.append(f"no {name}")
        elif expected is not None:
            try:
                actual = signature(obj)
            except (TypeError, ValueError):  # not a Python function or class any more
                actual = "no signature"
            if actual != expected:
                found.append(f"{name} takes {actual}, not {expected}")
    for name, used in USES.items():
        code = getattr(_find(name), "__code__", None)
        names = set(code.co_names) if code is not None else set()
        found += [f"{name} does not use {attr}" for attr in used if attr not in names]
    return found


_problems = problems()
if _problems:
    refuse_to_start(
        f"clip_service.ops.worker.BufferingWorker is built on Gunicorn {PINNED}'s gthread worker, and Gunicorn "
        f"{gunicorn.__version__} differs: {'; '.join(_problems)}. Install gunicorn=={PINNED} (requirements.txt), "
        f"or run Gunicorn's own gthread worker, without the slow-client protections, with {STOCK_WORKER}",
        EXIT_BAD_SETTINGS)

# Checked above: from here on these imports cannot fail.
from gunicorn import SERVER  # noqa: E402
from gunicorn.http import errors as _errors  # noqa: E402
from gunicorn.http.body import ChunkedReader  # noqa: E402
from gunicorn.http.parser import RequestParser  # noqa: E402
from gunicorn.util import http_date  # noqa: E402
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker  # noqa: E402

_REFUSALS = tuple((tuple(getattr(_errors, name) for name in names), status, reason)
                  for names, status, reason in REFUSALS)


def refusal(exc: BaseException) -> tuple[int, str]:
    """(status, reason) of Gunicorn's answer to ``exc``; the reason never holds what the client sent."""
    for kinds, status, reason in _REFUSALS:
        if isinstance(exc, kinds):
            return status, reason
    return 500, "internal error"


__all__ = ["PINNED", "STOCK_WORKER", "SERVER", "STOP_KEEPALIVE_LINGER", "ChunkedReader", "RequestParser", "TConn",
           "ThreadWorker", "http_date", "problems", "refusal", "signature"]
