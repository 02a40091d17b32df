"""Gunicorn settings for clip-service; every value comes from clip_service.config.

The model is loaded once in the master (preload_app) and shared copy-on-write
by forked gthread workers. See the README's "Environment variables" table.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile

# Cold start: no garbage collection while torch, open_clip and the app are imported
# and the model is built. Each full pass walks every object torch's import made
# (~0.1 s each; four ran, 0.3 s of a 2.6 s start here). The little cyclic garbage
# the imports leave (~8,000 objects) is frozen with the rest in when_ready, where
# collection resumes; a full pass to free it would cost more than it frees.
gc.disable()

from clip_service.startup import settings_or_exit  # noqa: E402

# First, before anything is created or imported: a bad setting ends the start
# here with one line and exit status 78. Gunicorn's loader turns an exception
# raised in this file into "Failed to read config file" and a traceback, but
# lets the SystemExit of settings_or_exit() through.
settings = settings_or_exit()

# prometheus_client picks its multi-process storage when first imported, so
# the directory must be in the environment before anything imports it.
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
_owns_metrics_dir = not _metrics_dir
if _owns_metrics_dir:
    _metrics_dir = tempfile.mkdtemp(prefix="clip-service-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
else:
    # Samples of a previous run would be summed into this one's.
    os.makedirs(_metrics_dir, exist_ok=True)
    for _name in os.listdir(_metrics_dir):
        if _name.endswith(".db"):
            os.remove(os.path.join(_metrics_dir, _name))

from clip_service.ops.allocator import return_large_blocks_to_the_os  # noqa: E402
from clip_service.ops.prefetch import prefetch  # noqa: E402

# Large freed buffers (decoded images) go back to the system, not to a thread's
# arena: the decode budget then bounds the RSS too. Inherited by the workers.
return_large_blocks_to_the_os()

# Cold start: the disk reads the weights while torch and the app are imported.
prefetch(settings.model.pretrained)

import torch  # noqa: E402
from gunicorn.arbiter import Arbiter  # noqa: E402
from gunicorn.workers.base import Worker  # noqa: E402
from prometheus_client import multiprocess  # noqa: E402

# Fork hazard (seen on these machines): a torch model built in the master with
# a multi-threaded intra-op pool makes forked children hang at their first
# parallel op (https://github.com/pytorch/pytorch/issues/17199; the workaround
# is from https://github.com/pytorch/pytorch/issues/58962). One thread in the
# master before the model is built avoids it; each worker sets its own count
# after the fork (post_fork below).
torch.set_num_threads(1)

bind = f"0.0.0.0:{settings.server.port}"
# Load the model before forking so its weights are shared, not copied per worker.
preload_app = True
# Threads overlap image downloads with inference; processes give true parallelism.
# gthread, except that a request reaches a thread only once it has all arrived, under
# deadlines (CLIP_HEADER_TIMEOUT, CLIP_BODY_MIN_RATE): a slow or stalled client cannot
# hold one, and probes are answered apart from requests (see the module's docstring).
worker_class = "clip_service.ops.worker.BufferingWorker"
workers = settings.server.workers
threads = settings.server.threads
# A flood of sockets cannot exhaust descriptors or memory: past this many per
# worker, the stalest waiting connection is dropped (CLIP_MAX_CONNECTIONS).
worker_connections = settings.server.max_connections
# Kill a worker silent for this long (a wedged forward pass), not a slow request's socket.
timeout = settings.server.timeout
# Cloud Run sends SIGKILL 10 s after SIGTERM: finish in-flight requests before that.
graceful_timeout = settings.server.graceful_timeout
# Recycle workers now and then so slow leaks (allocator fragmentation, caches)
# cannot grow without bound; the jitter keeps them from restarting together.
# A recycled worker is forked from the preloaded master: no model reload.
# 0 turns recycling (or the jitter) off, as it does in Gunicorn.
max_requests = settings.server.max_requests
max_requests_jitter = settings.server.max_requests_jitter
# Cloud Run's front end keeps connections open; a short keep-alive frees threads.
keepalive = 5
loglevel = settings.server.log_level.lower()
# Access and error logs as Cloud Logging JSON lines on stdout/stderr.
logger_class = "clip_service.ops.gunicorn_logs.JsonGunicornLogger"
accesslog = "-"
errorlog = "-"
# Gunicorn's runtime control socket is unused here, and its default path in
# $HOME is shared by every Gunicorn of the user (and may not be writable).
control_socket_disable = True


def when_ready(server: Arbiter) -> None:
    # The app is loaded (preload_app): what it allocated goes out of the collector's
    # reach (as before each fork, below), then collection resumes for the master and,
    # inherited, its workers.
    gc.freeze()
    gc.enable()


def pre_fork(server: Arbiter, worker: Worker) -> None:
    # Move everything the master allocated (model included) out of the
    # collector's reach, so no GC pass in a worker touches those pages and
    # un-shares them.
    gc.freeze()


def post_fork(server: Arbiter, worker: Worker) -> None:
    torch.set_num_threads(settings.batching.torch_threads)


def post_worker_init(worker: Worker) -> None:
    # Warm up here, after the fork, never in the master (the hazard above). The warm-up is
    # the readiness check's tiny text and image pass, so its cached result answers the first
    # /health/ready; a failure is logged, and /health and /health/ready report it (503).
    worker.wsgi.extensions["clip_readiness"].warm_up()
    worker.log.info("worker %s warmed up (torch threads=%s)", worker.pid, torch.get_num_threads())


def child_exit(server: Arbiter, worker: Worker) -> None:
    # Drop the dead worker's live gauges; its counters stay in the sums.
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Arbiter) -> None:
    if _owns_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
