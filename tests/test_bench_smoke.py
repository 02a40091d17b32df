"""Every benchmark in bench/ runs its smallest case to the end, so a refactor cannot break one silently.

Each script runs as ``python bench/<name>.py`` with BENCH_SMOKE=1 (bench/harness.py): the
ViT-S-32-alt architecture, a request or two per client, one round, this checkout alone (no
worktrees of older commits), photos made from tests/fixtures, results in a temporary folder.
The figures mean nothing; the exit status, the result files and bench/results left alone do.
Two scripts run at a time: each is mostly one process waiting on another (a service, a child).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from .helpers import FIXTURES, ROOT

pytestmark = pytest.mark.e2e

BENCH = ROOT / "bench"
# Script: (its smallest case's arguments, the result files it writes); the longest first.
CASES = {
    "cold_start": (["--runs", "1", "--baseline", ""], ["cold_start.md", "cold_start.json"]),
    "throughput": ([], ["throughput.md", "throughput.json"]),
    "memory": ([], ["memory.md", "memory.json"]),
    "lone_request": (["--rounds", "1", "--alone"], ["lone_request.md", "lone_request.json"]),
    "bulk": (["--images", "4", "--rounds", "1"], ["bulk-4.md", "bulk-4.json"]),
    "ray_bulk": (["--images", "8", "--rounds", "1"], ["ray_bulk-8.md", "ray_bulk-8.json"]),
    "cache": ([], ["cache.md", "cache.json"]),
    "slow_clients": ([], ["slow_clients.md", "slow_clients.json"]),
    "text_encode": (["--rounds", "1"], []),
    "ab": (["--scenario", "single-text", "--rounds", "1"], []),
    "precision": ([], []),  # its results only on a CPU with native bfloat16
    "hostile_memory": (["--scenarios", "16png"], ["hostile_memory.md", "hostile_memory.json"]),
    "zeroshot": ([], ["zeroshot.md", "zeroshot.json"]),
    "families": ([], ["families.md", "families.json"]),  # its smoke case: ViT-S-32-alt alone
    "formats": ([], ["formats.md", "formats.json"]),
    "cpu_per_item": (["--rounds", "1", "--alone"], ["cpu_per_item.md", "cpu_per_item.json"]),
}


def _photos(folder: Path) -> Path:
    """The folders and names the scripts ask for (photo640/, orig/rocket.jpg and retina.jpg, large/), from fixtures."""
    (folder / "photo640").mkdir(parents=True)
    (folder / "orig").mkdir()
    (folder / "large").mkdir()
    for name in ("chelsea_0.jpg", "coffee_0.jpg"):
        shutil.copy(FIXTURES / name, folder / "photo640" / name)
    Image.open(FIXTURES / "camera.png").convert("RGB").save(folder / "photo640" / "camera_0.jpg", quality=90)
    shutil.copy(FIXTURES / "coffee_0.jpg", folder / "orig" / "rocket.jpg")
    shutil.copy(FIXTURES / "chelsea_0.jpg", folder / "orig" / "retina.jpg")
    shutil.copy(FIXTURES / "large" / "chelsea_12mp.jpg", folder / "large" / "chelsea_12mp.jpg")
    return folder


def _tree(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def bench_env(tmp_path_factory):
    """The environment of a smoke run; bench/results must be as it was once every script has run."""
    scratch = tmp_path_factory.mktemp("bench-smoke")
    env = {**os.environ, "BENCH_SMOKE": "1", "BENCH_CACHE": str(scratch / "cache"),
           "BENCH_RESULTS": str(scratch / "results"), "BENCH_PHOTOS": str(_photos(scratch / "photos")),
           "HF_HUB_OFFLINE": "1"}
    env.pop("BENCH_MODEL", None)
    # The checkpoint first, once: scripts started together would each write it.
    subprocess.run([sys.executable, "-c", "from bench.harness import checkpoint; checkpoint()"], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=300)
    before = _tree(BENCH / "results")
    yield env
    assert _tree(BENCH / "results") == before


@pytest.fixture(scope="module")
def runs(request, bench_env):
    """The selected scripts' runs, started two at a time; script name -> future of its CompletedProcess."""
    selected = {item.callspec.params["name"] for item in request.session.items
                if item.originalname == "test_the_script_runs_its_smallest_case"}

    def run(name: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *CASES[name][0]], cwd=ROOT,
                              env=bench_env, capture_output=True, text=True, timeout=400)

    with ThreadPoolExecutor(2) as pool:
        yield {name: pool.submit(run, name) for name in CASES if name in selected}


def test_every_script_has_a_smoke_case():
    # harness and infinity_peer are modules the scripts import (the peer needs a venv of its own).
    scripts = {p.stem for p in BENCH.glob("*.py")} - {"harness", "__init__", "infinity_peer"}
    assert scripts == set(CASES) | {"gpu_check"}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", list(CASES))
def test_the_script_runs_its_smallest_case(name, runs, bench_env):
    done = runs[name].result()
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    _, writes = CASES[name]
    results = Path(bench_env["BENCH_RESULTS"])
    for file in writes:
        assert (results / file).stat().st_size > 0, file


def test_the_gpu_check_imports(bench_env):
    # No GPU here: the script's imports and the harness it uses must still resolve.
    done = subprocess.run([sys.executable, "-c", "import bench.gpu_check"], cwd=ROOT, env=bench_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
