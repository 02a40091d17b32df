"""A bad setting stops the real ``gunicorn wsgi:app`` with one line and exit 78; zeros that mean "off" start.

Each bad case starts Gunicorn with the tiny model and one kind of bad value;
the settings are checked before torch is imported or anything is created, so
each start ends in well under a second on an idle machine. The zero cases
start a real server and watch, in Gunicorn's access log, which worker pid
serves each request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from .helpers import ROOT
from .support.gunicorn import GunicornProcess, free_port, log_records

pytestmark = pytest.mark.e2e

GOOD_KEY = "a-good-key-of-32-characters-0001"
SHORT_KEY = "tiny-secret"
REDIS_PASSWORD = "hunter2-hunter2"

# (environment, fragments the last line must hold: the variable with the value given, and what is accepted)
BAD = {
    "not a number": ({"CLIP_WORKERS": "two"}, ["CLIP_WORKERS='two' is invalid", "a whole number, at least 1"]),
    "negative": ({"CLIP_BATCH_RUNNERS": "-2"}, ["CLIP_BATCH_RUNNERS='-2' is invalid", "at least 1"]),
    "zero where it means nothing": ({"CLIP_THREADS": "0"}, ["CLIP_THREADS='0' is invalid", "at least 1"]),
    "negative where zero is fine": ({"CLIP_MAX_REQUESTS_JITTER": "-1"},
                                    ["CLIP_MAX_REQUESTS_JITTER='-1' is invalid", "a whole number, at least 0"]),
    "not finite": ({"CLIP_FETCH_READ_TIMEOUT": "inf"},
                   ["CLIP_FETCH_READ_TIMEOUT='inf' is invalid", "a number greater than 0"]),
    "port out of range": ({"PORT": "70000"}, ["PORT='70000' is invalid", "a whole number from 1 to 65535"]),
    "timeout out of range": ({"CLIP_CACHE_REDIS_TIMEOUT": "50"},
                             ["CLIP_CACHE_REDIS_TIMEOUT='50' is invalid", "greater than 0 and at most 1"]),
    "not a boolean": ({"CLIP_BATCHING": "maybe"}, ["CLIP_BATCHING='maybe' is invalid", "true or false"]),
    "unknown device": ({"CLIP_DEVICE": "tpu"}, ["CLIP_DEVICE='tpu' is invalid", "auto, cpu, cuda or cuda:N"]),
    "unknown log level": ({"LOG_LEVEL": "chatty"},
                          ["LOG_LEVEL='chatty' is invalid", "DEBUG, INFO, WARNING, ERROR or CRITICAL"]),
    "malformed allow list": ({"CLIP_FETCH_ALLOW": "127.0.0.1"},
                             ["CLIP_FETCH_ALLOW='127.0.0.1' is invalid", "host:port pairs and CIDR blocks"]),
    "malformed port list": ({"CLIP_FETCH_PORTS": "80,http"},
                            ["CLIP_FETCH_PORTS='80,http' is invalid", "TCP ports from 1 to 65535"]),
    "short API key": ({"CLIP_API_KEYS": f"{GOOD_KEY},{SHORT_KEY}"},
                      ["CLIP_API_KEYS=(value not shown) is invalid", "key 2 has 11 characters"]),
    "unreadable keys file": ({"CLIP_API_KEYS_FILE": "/no/such/dir/keys"},
                             ["CLIP_API_KEYS_FILE='/no/such/dir/keys' is invalid", "cannot be read", "UTF-8 file"]),
    "malformed Redis URL": ({"CLIP_CACHE_REDIS_URL": f"default:{REDIS_PASSWORD}@cache:6379"},
                            ["CLIP_CACHE_REDIS_URL=(value not shown) is invalid", "redis://"]),
    "two at once": ({"CLIP_WORKERS": "0", "CLIP_MAX_REQUESTS": "many"},
                    ["CLIP_WORKERS='0' is invalid", "; CLIP_MAX_REQUESTS='many' is invalid"]),
}
SECRETS = (GOOD_KEY, SHORT_KEY, REDIS_PASSWORD)


@pytest.fixture
def tiny_env(tiny_model_dir, tmp_path) -> dict[str, str]:
    """A clean environment for the tiny model, its temporary files in a folder of its own."""
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIP_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    return {**env, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path / "tmp"),
            "CLIP_MODEL": f"local-dir:{tiny_model_dir}",
            "CLIP_PRETRAINED": str(tiny_model_dir / "open_clip_pytorch_model.bin")}


def run_to_exit(command: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run ``command`` until it exits; (status, stdout and stderr together). A start that never ends fails."""
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the master and any worker it forked
        output, _ = proc.communicate()
        pytest.fail(f"still running after {timeout} s (the bad value was not refused):\n{output[-3000:]}")
    return proc.returncode, output


def assert_refused(status: int, output: str, fragments: list[str]) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert status == 78, output[-3000:]
    assert lines and lines[-1].startswith("clip-service cannot start: "), output[-3000:]
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    assert "Traceback" not in output and "Failed to read config file" not in output, output[-3000:]
    assert sum("cannot start" in line for line in lines) == 1
    for secret in SECRETS:
        assert secret not in output


@pytest.mark.parametrize("case", BAD)
def test_gunicorn_refuses_a_bad_setting_with_one_line(case, tiny_env, tmp_path):
    env, fragments = BAD[case]
    status, output = run_to_exit(
        [sys.executable, "-m", "gunicorn", "wsgi:app", "--bind", f"127.0.0.1:{free_port()}"],
        {**tiny_env, **env})
    assert_refused(status, output, fragments)
    assert os.listdir(tmp_path / "tmp") == []  # refused before the metrics directory was made


@pytest.mark.parametrize("entry", ["the app factory", "a command"])
def test_every_entry_point_refuses_the_same_way(entry, tiny_env):
    # wsgi.py under another server (the app factory reads the settings first), or a command such as a bulk job.
    code = "import wsgi" if entry == "the app factory" else \
        "from clip_service.startup import settings_or_exit; settings_or_exit(); print('started')"
    env, fragments = BAD["two at once"]
    status, output = run_to_exit([sys.executable, "-c", code], {**tiny_env, **env})
    assert_refused(status, output, fragments)


def access_pids(server: GunicornProcess, path: str) -> list[int]:
    """The pid that served each request for ``path``, in the access log's order."""
    return [r["pid"] for r in log_records(server.output())
            if r.get("logger") == "gunicorn.access" and r["httpRequest"]["requestUrl"] == path]


def wait_live(server: GunicornProcess, timeout: float = 60) -> None:
    """Wait until a worker answers /health/live (answered by its event loop: it counts as no request)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.output()[-3000:]
        try:
            if requests.get(server.base + "/health/live", timeout=2).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.2)
    raise AssertionError(f"no worker answered within {timeout} s:\n{server.output()[-3000:]}")


def get_health(server: GunicornProcess, count: int) -> list[int]:
    """Send ``count`` GET /health one after another, each on its own connection; the pids that served them."""
    before = len(access_pids(server, "/health"))
    for _ in range(count):
        response = requests.get(server.base + "/health", headers={"Connection": "close"}, timeout=10)
        assert response.status_code == 200
    deadline = time.monotonic() + 10
    while len(access_pids(server, "/health")) < before + count and time.monotonic() < deadline:
        time.sleep(0.1)  # the access log line is written after the response
    return access_pids(server, "/health")[before:]


@pytest.mark.timeout(180)
def test_max_requests_zero_never_recycles_a_worker(tiny_env, tmp_path):
    # A jitter of 2 would recycle by the 3rd request if 0 were taken as a count; DEBUG logs Gunicorn's config.
    server = GunicornProcess({**tiny_env, "CLIP_WORKERS": "1", "CLIP_MAX_REQUESTS": "0",
                              "CLIP_MAX_REQUESTS_JITTER": "2", "CLIP_TIMEOUT": "0", "CLIP_GRACEFUL_TIMEOUT": "0",
                              "LOG_LEVEL": "DEBUG"}, tmp_path / "gunicorn.log")
    try:
        wait_live(server)
        pids = get_health(server, 12)
        assert len(pids) == 12 and len(set(pids)) == 1, pids
        assert "Autorestarting" not in server.output()
        config = next(r["message"] for r in log_records(server.output())
                      if r.get("message", "").startswith("Current configuration"))
        for line in ("  max_requests: 0", "  max_requests_jitter: 2", "  timeout: 0", "  graceful_timeout: 0"):
            assert line in config.splitlines(), line
    finally:
        server.stop()


@pytest.mark.timeout(180)
def test_max_requests_jitter_zero_recycles_after_exactly_max_requests(tiny_env, tmp_path):
    server = GunicornProcess({**tiny_env, "CLIP_WORKERS": "1", "CLIP_MAX_REQUESTS": "3",
                              "CLIP_MAX_REQUESTS_JITTER": "0"}, tmp_path / "gunicorn.log")
    try:
        wait_live(server)
        first = get_health(server, 2)
        assert "Autorestarting" not in server.output()
        first += get_health(server, 1)
        assert len(first) == 3 and len(set(first)) == 1, first
        deadline = time.monotonic() + 30
        while "Autorestarting" not in server.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.output().count("Autorestarting") == 1
        wait_live(server)
        second = get_health(server, 1)
        assert second and second[0] != first[0], (first, second)
    finally:
        server.stop()
