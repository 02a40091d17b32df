"""Gunicorn settings for clip-service; every value comes from clip_service.config.

The model is loaded once in the master (preload_app) and shared copy-on-write
by forked gthread workers. See the README's "Environment variables" table.
"""

import gc

import torch

from clip_service.config import Settings

settings = Settings.from_env()

# Fork hazard (seen on these machines): a torch model built in the master with
# a multi-threaded intra-op pool makes forked children hang at their first
# parallel op. One thread in the master before the model is built avoids it;
# each worker sets its own count after the fork (post_fork below).
torch.set_num_threads(1)

bind = f"0.0.0.0:{settings.port}"
# Load the model before forking so its weights are shared, not copied per worker.
preload_app = True
# Threads overlap image downloads with inference; processes give true parallelism.
worker_class = "gthread"
workers = settings.workers
threads = settings.threads
# Kill a worker silent for this long (a wedged forward pass), not a slow request's socket.
timeout = settings.timeout
# Cloud Run sends SIGKILL 10 s after SIGTERM: finish in-flight requests before that.
graceful_timeout = settings.graceful_timeout
# Cloud Run's front end keeps connections open; a short keep-alive frees threads.
keepalive = 5
loglevel = settings.log_level.lower()
accesslog = "-"
# Gunicorn's runtime control socket is unused here, and its default path in
# $HOME is shared by every Gunicorn of the user (and may not be writable).
control_socket_disable = True
errorlog = "-"


def pre_fork(server, worker):
    # Move everything the master allocated (model included) out of the
    # collector's reach, so no GC pass in a worker touches those pages and
    # un-shares them.
    gc.freeze()


def post_fork(server, worker):
    torch.set_num_threads(settings.torch_threads)


def post_worker_init(worker):
    # Warm up here, after the fork, never in the master (the hazard above).
    embedder = worker.wsgi.extensions["clip_embedder"]
    embedder.warm_up()
    worker.log.info("worker %s warmed up (torch threads=%s)", worker.pid, torch.get_num_threads())
