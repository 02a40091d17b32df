"""The harness that the tests and bench/ share: a real Gunicorn, a photo server, fixed-seed checkpoints.

It lives under tests/ because CI runs the tests and not the benchmarks, so a change that breaks the
harness fails there first; the tests never import bench/. Nothing here imports torch or open_clip at
import time: a benchmark's load generator and its child processes stay as light as they were.
"""
