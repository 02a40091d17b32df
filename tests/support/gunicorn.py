"""A real ``gunicorn`` in a subprocess on 127.0.0.1, and what /proc says about its processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_records(log: str) -> list[dict]:
    """The JSON lines of a Gunicorn log (startup messages from libraries may not be JSON)."""
    records = []
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    return records


def status_kib(pid: int, field: str) -> int:
    """A KiB field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``...); 0 once the process is gone."""
    return _proc_field(f"/proc/{pid}/status", field)


def pss_kib(pid: int) -> int:
    """The proportional set size of ``pid`` (its shared pages split between their sharers)."""
    return _proc_field(f"/proc/{pid}/smaps_rollup", "Pss")


def _proc_field(path: str, name: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class GunicornProcess:
    """``gunicorn <app>`` run from ``cwd`` on a free port of 127.0.0.1, stdout and stderr in ``log_path``.

    Without ``log_path`` the output goes to a temporary file that ``stop()`` removes.
    """

    def __init__(self, env: dict[str, str], log_path: Path | None = None, extra_args: tuple[str, ...] = (),
                 app: str = "wsgi:app", cwd: Path = ROOT):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._own_log = log_path is None
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix="gunicorn-", suffix=".log")
            os.close(handle)
            log_path = Path(name)
        self.log_path = Path(log_path)
        self.startup_seconds: float | None = None
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PORT": str(self.port), **env}
        self._log = open(self.log_path, "wb")
        self.spawned_wall = time.time()
        self.spawned = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", app, "--bind", f"127.0.0.1:{self.port}", *extra_args],
            cwd=cwd, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 120, path: str = "/health", poll: float = 0.05) -> float:
        """Wait for the first 200 from ``path``; return (and keep as ``startup_seconds``) the seconds since spawn."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                if requests.get(self.base + path, timeout=5).status_code == 200:
                    self.startup_seconds = time.monotonic() - self.spawned
                    return self.startup_seconds
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or a worker still booting
            time.sleep(poll)
        raise AssertionError(f"gunicorn not answering 200 on {path} after {timeout}s:\n{self.output()[-3000:]}")

    def wait_for_log(self, fragment: str, count: int = 1, timeout: float = 120) -> bool:
        """Wait until ``fragment`` appears ``count`` times in the output; False if it did not in ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while self.output().count(fragment) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pids(self) -> list[int]:
        """The master's pid and its live workers'."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [self.proc.pid] + [int(c) for c in children]

    def pss_mib(self) -> float:
        """Total proportional set size of master + workers (shared pages split between them)."""
        return sum(pss_kib(pid) for pid in self.pids()) / 1024

    def rss_mib(self) -> dict[int, float]:
        return {pid: status_kib(pid, "VmRSS") / 1024 for pid in self.pids()}

    def peak_rss_mib(self) -> float:
        """The master's peak RSS (VmHWM): with preload, what loading the model cost."""
        return status_kib(self.proc.pid, "VmHWM") / 1024

    def cpu_seconds(self) -> float:
        """User + system CPU seconds so far of the master, its live workers, and the workers it reaped."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # a worker that exited just now: the master's cutime/cstime hold it once reaped
            total += int(fields[11]) + int(fields[12])  # utime, stime (all threads)
            if pid == self.proc.pid:
                # Workers recycled after CLIP_MAX_REQUESTS take their CPU with them; the master reaps them.
                total += int(fields[13]) + int(fields[14])  # cutime, cstime
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` s; the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        if self._own_log:
            self.log_path.unlink(missing_ok=True)
        return self.proc.returncode
