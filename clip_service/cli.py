"""The ``clip-service`` command: ``clip-service embed INPUT --output OUT`` for backfills.

Exit status: 0 when every item has a row (failed items included: they are
rows with an error), 1 when the service cannot be used (unreachable, not a
clip-service, wrong key, unavailable through every retry), 2 for a bad
command line or INPUT/OUT, 78 for a bad CLIP_* setting and 3 for a model that
cannot load (as ``gunicorn wsgi:app``), 130 when interrupted (Ctrl-C) and 143
when stopped by SIGTERM. Every failure is one line on stderr; rows already
written stay, and a rerun resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from .bulk import DTYPES  # pyarrow-free: the names --dtype takes

# The service's own statuses for weights it cannot load (3) and bad settings (78), and its one line.
from .startup import EXIT_BAD_SETTINGS, EXIT_MODEL_LOAD, refusal_line

PROG = "clip-service"
API_KEY_ENV = "CLIP_SERVICE_API_KEY"
EXIT_SERVICE, EXIT_USAGE = 1, 2
# 128 + the signal's number, as a shell reports a process that the signal ended.
EXIT_INTERRUPTED, EXIT_TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Tools for clip-service.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    embed = commands.add_parser(
        "embed", help="embed a folder, a URL list or a CSV/JSONL file into Parquet or .npy (resumable)",
        description="Embed every item of INPUT into OUT; rerun the same command to resume after a stop.",
        epilog="INPUT: a folder (image files, recursively), a .csv or .jsonl file with an id column and a text, "
               "url or path column, or any other file as a list of image URLs (one a line). OUT: name.parquet "
               "(a directory of part files) or name.npy (plus name.ids.txt and name.errors.csv). Without --url "
               "the model runs in this process with the CLIP_* settings of the service; with --ray, in Ray actors.")
    embed.add_argument("input", metavar="INPUT")
    embed.add_argument("--output", "-o", required=True, metavar="OUT", help="name.parquet or name.npy")
    embed.add_argument("--url", help="a running clip-service to send the items to (else: the model in-process)")
    embed.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                       help="run as a Ray Data job on the cluster at ADDRESS (ray://head:10001, auto, host:port); "
                            "without ADDRESS on $RAY_ADDRESS, else a local Ray (pip install 'clip-service[ray]')")
    embed.add_argument("--actors", type=_positive(int), default=1,
                       help="with --ray: actors, each with the model loaded (default 1)")
    embed.add_argument("--cpus-per-actor", type=_positive(float),
                       help="with --ray: CPUs Ray reserves per actor (default CLIP_BATCH_RUNNERS x CLIP_TORCH_THREADS)")
    embed.add_argument("--gpus-per-actor", type=_positive(float), help="with --ray: GPUs per actor (e.g. 1)")
    embed.add_argument("--api-key", default=os.environ.get(API_KEY_ENV) or None,
                       help=f"the service's API key (default: ${API_KEY_ENV})")
    embed.add_argument("--concurrency", "-c", type=_positive(int), default=4,
                       help="batches in flight (with --ray: per actor; default 4)")
    embed.add_argument("--batch-size", type=_positive(int),
                       help="items per batch (default and maximum: the service's limit per request)")
    embed.add_argument("--retry-failed", action="store_true", help="embed again the items whose row is an error")
    embed.add_argument("--dtype", choices=DTYPES, default="float32",
                       help="store the vectors as float32 (default), float16, int8 (round(256 x)) or binary (the "
                            "signs, 8 dimensions a byte); a resume must use the same")
    embed.add_argument("--flush-rows", type=_positive(int), default=5000,
                       help="write a part file after this many rows (default 5000)")
    embed.add_argument("--flush-seconds", type=_positive(float), default=30.0,
                       help="... or after this many seconds (default 30)")
    embed.add_argument("--timeout", type=_positive(float), default=120.0,
                       help="seconds per HTTP request to the service (default 120)")
    embed.add_argument("--deadline", type=_positive(float), default=900.0,
                       help="seconds one batch may take with every retry before the run stops (default 900)")
    embed.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="show the progress bar (default: only when stderr is a terminal)")
    embed.add_argument("--verbose", "-v", action="store_true", help="log what the model and fetcher do")
    embed.set_defaults(handler=embed_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv``; return the exit status."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


def embed_command(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.suffix.lower() not in (".parquet", ".npy"):
        return _fail(f"OUT must end in .parquet or .npy, not {output.name!r}", EXIT_USAGE)
    try:
        from .bulk import run as bulk_run
        from .bulk import store as bulk_store
    except ImportError as exc:
        return _fail(f"the embed command needs {exc.name}: pip install 'clip-service[bulk]'", EXIT_USAGE)
    from .bulk.inputs import InputError, read_items
    from .bulk.ray.job import ClusterError, ModelCannotLoad
    from .client import ClipClientError

    if args.ray is not None and args.url:
        return _fail("--ray and --url are two places to run the model: choose one", EXIT_USAGE)
    with _logs(args.verbose), _stop_signals():
        backend = store = job = settings = None
        try:
            if args.url:  # a wrong URL or key stops here, before INPUT is read
                from .bulk.remote import RemoteBackend

                backend = RemoteBackend(args.url, api_key=args.api_key, concurrency=args.concurrency,
                                        timeout=args.timeout, deadline=args.deadline, dtype=args.dtype)
            elif args.ray is not None:  # a bad setting stops here, in the driver: before INPUT, Ray or any actor
                settings = _settings()
                _needs_ray()
            items = read_items(args.input)
            is_npy = output.suffix.lower() == ".npy"
            store = bulk_store.PartStore(output.with_name(output.name + ".parts") if is_npy else output).open()
            if settings is not None:  # --ray: the model loads in the actors, not here
                job = _ray_job(args, items, store, settings)
            elif backend is None:  # the model loads only once INPUT and OUT are known to be usable
                backend = _local_backend()
            job = job or bulk_run.BulkRun(items, store, backend, bulk_run.Options(
                concurrency=args.concurrency, batch_size=args.batch_size, flush_rows=args.flush_rows,
                flush_seconds=args.flush_seconds, retry_failed=args.retry_failed, dtype=args.dtype,
                progress=sys.stderr.isatty() if args.progress is None else args.progress))
            if is_npy and job.todo:
                bulk_store.remove_npy(output)  # stale until this run completes
            tally = job.execute()
            where = str(output)
            if is_npy:
                vectors, _ = bulk_store.export_npy(store, output, (item.id for item in items))
                ids, errors = bulk_store.npy_paths(output)[1:]
                where = f"{output} ({vectors} vectors), {ids.name}, {errors.name}"
            _say(_summary(tally, where))
            return 0
        except _Terminated:
            return _fail(_stopped("interrupted by SIGTERM", job), EXIT_TERMINATED)
        except KeyboardInterrupt:
            return _fail(_stopped("interrupted", job), EXIT_INTERRUPTED)
        except InputError as exc:
            return _fail(str(exc), EXIT_USAGE)
        except (ClipClientError, ClusterError) as exc:
            return _fail(_stopped(str(exc), job), EXIT_SERVICE)
        except ModelCannotLoad as exc:  # on the Ray workers: the service's line and status
            return _fail(refusal_line(exc), EXIT_MODEL_LOAD)
        except _SettingsError as exc:
            return _fail(str(exc), exc.status)
        except OSError as exc:  # the output cannot be written (disk full, permissions)
            return _fail(_stopped(f"cannot write {output}: {exc.strerror or exc}", job), EXIT_USAGE)
        finally:
            if store is not None:
                store.close()
            if backend is not None:
                backend.close()  # in-process: waits for the forward passes under way (bulk/local.py)


class _SettingsError(Exception):
    """A CLIP_* setting (exit 78) or the model it names (exit 3) cannot be used: one line, as the service says it."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _settings():
    from .config import ConfigError, Settings

    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise _SettingsError(refusal_line(exc), EXIT_BAD_SETTINGS) from None


def _needs_ray() -> None:
    from .bulk.inputs import InputError

    try:
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise InputError(f"--ray needs {exc.name}: pip install 'clip-service[ray]'") from None


def _ray_job(args: argparse.Namespace, items, store, settings):
    from .bulk.ray.job import RayJob, RayOptions

    return RayJob(items, store, settings, RayOptions(
        address=args.ray or None, actors=args.actors, concurrency=args.concurrency,
        cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor or 0, batch_size=args.batch_size,
        flush_rows=args.flush_rows, flush_seconds=args.flush_seconds, retry_failed=args.retry_failed,
        dtype=args.dtype, progress=sys.stderr.isatty() if args.progress is None else args.progress,
        verbose=args.verbose))


def _local_backend():
    from .bulk.inputs import InputError

    settings = _settings()
    try:
        from .bulk.local import LocalBackend
        from .model.errors import ModelLoadError
    except ImportError as exc:
        raise InputError(f"running the model in-process needs {exc.name}: pip install 'clip-service[server]' "
                         "(or pass --url to use a running service)") from None
    try:
        return LocalBackend(settings)
    except ModelLoadError as exc:
        raise _SettingsError(refusal_line(exc), EXIT_MODEL_LOAD) from None


def _summary(tally, where: str) -> str:
    speed = f"{tally.elapsed():.1f} s, {tally.rate():.1f} items/s" if tally.done else "nothing left to do"
    return (f"{tally.total} items: {tally.embedded} embedded, {tally.failed} failed, {tally.already} written before; "
            f"{speed} -> {where}")


def _stopped(reason: str, job) -> str:
    if job is None:
        return reason
    tally = job.tally
    return (f"{reason} ({tally.already + tally.done} of {tally.total} items written, {tally.failed} of them "
            f"failed in this run; rerun the same command to resume)")


def _say(message: str) -> None:
    print(f"{PROG} embed: {message}", file=sys.stderr, flush=True)


def _fail(message: str, status: int) -> int:
    _say(message)
    return status


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error
    return parse


@contextlib.contextmanager
def _logs(verbose: bool):
    """Keep library logs (a warning per failed image, load messages) off the terminal unless asked for."""
    root = logging.getLogger()
    saved = root.level
    if verbose:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    root.setLevel(logging.INFO if verbose else logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(saved)


class _Terminated(KeyboardInterrupt):
    """SIGTERM: the run stops as on Ctrl-C, and exits 143."""


@contextlib.contextmanager
def _stop_signals():
    """Ctrl-C and SIGTERM (a stopped container, ``kill``) end the run: written rows kept, the rest redone.

    SIGINT is taken over only where Python's own handler has it: a job started
    in the background of a shell inherits it ignored, and keeps ignoring it.
    """
    try:
        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _interrupt)}
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, _interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _interrupt(signum, frame):
    # One stop is enough: a second Ctrl-C must not cut short the writing of the last rows, or
    # the wait for the forward passes under way (moments; SIGKILL still ends the process at once).
    for each in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(each) is _interrupt:
            signal.signal(each, signal.SIG_IGN)
    raise _Terminated if signum == signal.SIGTERM else KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
