"""clip-service on Ray Data (clip_service.bulk.ray): the service's vectors and codes, resumption, one-line refusals.

A real Ray (``ray.init(num_cpus=2)``, on loopback) is started here for the module; its actors load the
tiny model as an open_clip ``local-dir:``, since a Ray worker is a new process that never saw the
test's registered config. The command runs as a subprocess against the same Ray (``--ray ADDRESS``),
as it would against a cluster. The service to compare with is built from the very same ``Settings``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import ray.data
from PIL import Image

from clip_service import create_app
from clip_service.bulk.ray import ClipEmbed, embed_dataset
from clip_service.bulk.store import ModelStamp
from clip_service.bulk.store import schema as store_schema
from clip_service.bulk.store import stored as stored_vector
from clip_service.client.sources import data_uri
from clip_service.config import ConfigError, Settings

from .helpers import FIXTURES, ROOT, image_bytes
from .support.gunicorn import free_port
from .support.image_server import send_body

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

PHOTOS = ("chelsea_0.jpg", "coffee_0.jpg", "camera.png")


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray with two CPUs for this module: its address, for the command's ``--ray ADDRESS``."""
    # The proxies of the environment must not reach the workers (conftest clears them only per test).
    saved = {name: os.environ.pop(name) for name in list(os.environ) if name.lower().endswith("_proxy")}
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    finally:
        os.environ.update(saved)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture
def model_env(tiny_model_dir, image_server) -> dict[str, str]:
    """The CLIP_* settings of both sides: the tiny model, fp32 pinned, the image server allowed, one runner."""
    return {"CLIP_MODEL": f"local-dir:{tiny_model_dir}",
            "CLIP_PRETRAINED": str(tiny_model_dir / "open_clip_pytorch_model.bin"), "CLIP_PRECISION": "fp32",
            "CLIP_FETCH_ALLOW": f"{image_server.host}:{image_server.port}", "CLIP_BATCH_RUNNERS": "1",
            "HF_HUB_OFFLINE": "1"}


@pytest.fixture
def settings(model_env) -> Settings:
    return Settings.from_env({name: value for name, value in model_env.items() if name.startswith("CLIP_")})


@pytest.fixture
def service(settings):
    """The service itself, with the settings the Ray side gets (draft decoding on, as by default)."""
    return create_app({"TESTING": True}, settings=settings).test_client()


def variants(count: int, seed: int) -> list[bytes]:
    """``count`` distinct small images: crops of the photos, JPEG and PNG."""
    rng = random.Random(seed)
    photos = [Image.open(FIXTURES / name).convert("RGB") for name in PHOTOS]
    made = []
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        box = (rng.randint(0, w // 3), rng.randint(0, h // 3), rng.randint(2 * w // 3, w), rng.randint(2 * h // 3, h))
        image = photo.crop(box).resize((rng.randint(40, 160), rng.randint(40, 160)))
        made.append(image_bytes(image, "PNG") if i % 4 == 3 else image_bytes(image, "JPEG", quality=90))
    return made


def service_outcomes(service, texts: dict[str, str], images: dict[str, str]) -> dict[str, tuple]:
    """(vector or None, error code) per id from the service's own endpoints, a request's worth at a time."""
    outcomes = {}
    ids, values = list(texts), list(texts.values())
    for start in range(0, len(ids), 64):
        answer = service.post("/embed/text", json={"texts": values[start:start + 64]})
        assert answer.status_code == 200, answer.get_json()
        for item_id, vector in zip(ids[start:start + 64], answer.get_json()["embeddings"]):
            outcomes[item_id] = (np.array(vector, dtype=np.float32), None)
    ids, values = list(images), list(images.values())
    for start in range(0, len(ids), 64):
        answer = service.post("/embed/image", json={"urls": values[start:start + 64]}).get_json()
        errors = {error["index"]: error["code"] for error in answer["errors"]}
        for i, (item_id, vector) in enumerate(zip(ids[start:start + 64], answer["embeddings"])):
            outcomes[item_id] = (np.array(vector, dtype=np.float32) if vector else None, errors.get(i))
    return outcomes


def assert_same(rows: dict[str, dict], expected: dict[str, tuple]) -> None:
    assert sorted(rows) == sorted(expected)
    assert {i: r["error_code"] for i, r in rows.items()} == {i: code for i, (_, code) in expected.items()}
    good = [i for i, (vector, _) in expected.items() if vector is not None]
    np.testing.assert_allclose([rows[i]["vector"] for i in good], [expected[i][0] for i in good], atol=1e-6)
    assert all(rows[i]["vector"] is None and rows[i]["error_message"] for i in expected if i not in good)


def by_id(table: pa.Table) -> dict[str, dict]:
    rows = table.to_pylist()
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), "an id was written twice"
    return {row["id"]: row for row in rows}


# --- the step: the service's vectors and codes -----------------------------------------------------

def test_two_hundred_mixed_items_give_the_services_vectors_and_codes(ray_address, settings, service, image_server,
                                                                    tmp_path):
    made = variants(150, seed=1)
    rows: list[dict] = []  # id and one of text/url/path/bytes, as a user's dataset has them
    texts: dict[str, str] = {}
    images: dict[str, str] = {}  # id -> what the service is sent for it (a URL or a data URI)
    expected: dict[str, tuple] = {}  # outcomes decided without the service (it has no files, no rows)
    for i in range(39):
        texts[f"text-{i}"] = f"a photo of thing number {i}"
        rows.append({"id": f"text-{i}", "text": texts[f"text-{i}"]})
    for i, data in enumerate(made[:40]):  # files
        path = tmp_path / f"img-{i}.{'png' if i % 4 == 3 else 'jpg'}"
        path.write_bytes(data)
        rows.append({"id": f"path-{i}", "path": str(path)})
        images[f"path-{i}"] = data_uri(data)
    for i, data in enumerate(made[40:80]):  # URLs on the loopback image server the fetch setting allows
        rows.append({"id": f"url-{i}", "url": image_server.add(f"/made-{i}.jpg", data, "image/jpeg")})
        images[f"url-{i}"] = rows[-1]["url"]
    for i, data in enumerate(made[80:115]):  # data URIs
        rows.append({"id": f"data-{i}", "url": data_uri(data)})
        images[f"data-{i}"] = rows[-1]["url"]
    for i, data in enumerate(made[115:150]):  # bytes
        rows.append({"id": f"bytes-{i}", "bytes": data})
        images[f"bytes-{i}"] = data_uri(data)
    bad_images = {
        "url-404": image_server.url("/gone.jpg"),
        "url-blocked": f"http://127.0.0.1:{free_port()}/x.jpg",  # loopback, not the allowed host:port
        "url-not-http": "ftp://example.com/x.jpg",
        "data-not-base64": "data:image/png;base64,%%%",
        "data-not-an-image": data_uri(b"just some text"),
        "data-tiff": data_uri(image_bytes(Image.new("RGB", (8, 8), "red"), "TIFF")),
    }
    for item_id, url in bad_images.items():
        rows.append({"id": item_id, "url": url})
        images[item_id] = url
    rows.append({"id": "bytes-not-an-image", "bytes": b"\x00\x01 not an image"})
    images["bytes-not-an-image"] = data_uri(b"\x00\x01 not an image")
    rows.append({"id": "path-missing", "path": str(tmp_path / "absent.jpg")})
    expected["path-missing"] = (None, "unreadable_file")
    rows.append({"id": "text-too-long", "text": "x" * (settings.limits.max_text_chars + 1)})
    expected["text-too-long"] = (None, "too_long")
    rows.append({"id": "row-empty"})
    expected["row-empty"] = (None, "invalid_input")
    rows.append({"id": "row-two", "text": "a cat", "url": image_server.url("/coffee_0.jpg")})
    expected["row-two"] = (None, "invalid_input")
    assert len(rows) == 200

    # Every row with every column (None where it names nothing); shuffled, so batches mix texts and
    # images; two actors of one CPU each.
    rows = [{"id": row["id"], **{name: row.get(name) for name in ("text", "url", "path", "bytes")}} for row in rows]
    random.Random(2).shuffle(rows)
    dataset = ray.data.from_items(rows, override_num_blocks=8)
    result = embed_dataset(dataset, settings, actors=2, concurrency=2, batch_size=24).materialize()
    table = pa.concat_tables(ray.get(result.to_arrow_refs()), promote_options="permissive")

    expected.update(service_outcomes(service, texts, images))
    assert_same(by_id(table), expected)
    assert len({code for _, code in expected.values()}) >= 8  # the families of failure were all there
    # The layout of the command's parts, with the stamp in the schema; the image bytes are not carried on.
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 32)
    assert {"id", "text", "url", "path", "modality", "vector", "error_code", "error_message"} == set(
        table.column_names)
    stamp = json.loads(table.schema.metadata[b"clip_service"])
    assert stamp["dimensions"] == 32 and stamp["dtype"] == "float32"


@pytest.fixture
def in_this_process():
    """ClipEmbeds built here, closed after the test; the root logger's level and torch's threads as they were
    (an actor's process is its own: it quiets its logs and sets its threads, as the command does)."""
    import torch

    root, threads, made = logging.getLogger(), torch.get_num_threads(), []
    level = root.level
    yield made
    for step in reversed(made):
        step.backend.close()
    root.setLevel(level)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", ["float16", "int8", "binary"])
def test_the_step_stores_the_commands_dtypes(dtype, settings, image_server, in_this_process):
    # ClipEmbed is a plain class: called here, in this process, it is what each actor runs.
    batch = pa.table({"id": ["cat", "coffee", "gone"], "text": ["a photo of a cat", None, None],
                      "url": [None, image_server.url("/coffee_0.jpg"), image_server.url("/gone.jpg")]})
    in_this_process.extend([ClipEmbed(settings), ClipEmbed(settings, dtype=dtype)])
    floats, stored = (step(batch) for step in in_this_process)
    stamp = ModelStamp(**json.loads(stored.schema.metadata[b"clip_service"]))
    assert stamp.dtype == dtype and stored.schema.field("vector").type == store_schema(32, stamp).field("vector").type
    for as_float, as_stored in zip(floats.column("vector").to_pylist()[:2], stored.column("vector").to_pylist()):
        np.testing.assert_array_equal(as_stored, stored_vector(np.array(as_float, dtype=np.float32), stamp))
    assert stored.column("vector").to_pylist()[2] is None and stored.column("error_code").to_pylist()[2]


def test_a_bad_setting_fails_in_the_driver_before_any_actor(ray_address, settings):
    dataset = ray.data.from_items([{"id": "a", "text": "a cat"}])
    with pytest.raises(ConfigError) as refused:
        embed_dataset(dataset, settings.replace(max_batch=0, fetch_allow="not an address"))
    assert "CLIP_MAX_BATCH" in str(refused.value) and "CLIP_FETCH_ALLOW" in str(refused.value)
    assert len(str(refused.value).splitlines()) == 1


# --- the command: --ray ------------------------------------------------------------------------------

def environment(**extra: str) -> dict[str, str]:
    """This process's environment with ``extra``, and no RAY_ADDRESS: each run says where its Ray is."""
    return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **extra}


def run_cli(*args: str, env: dict, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clip_service.cli", "embed", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=environment(**env))


def last_line(stderr: str) -> str:
    """The command's own line: Ray's lines (its warnings, its workers' output) come before it."""
    assert "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1]


def written(output: Path) -> int:
    count = 0
    for part in sorted(output.glob("part-*.parquet")) if output.exists() else []:
        try:
            count += pq.read_metadata(part).num_rows
        except OSError:
            pass  # renamed into place just now
    return count


def test_a_job_killed_midway_and_rerun_writes_every_id_exactly_once(ray_address, model_env, service, image_server,
                                                                     tmp_path):
    made = variants(120, seed=3)
    released = threading.Event()
    served = [0]

    def slow(data):
        def route(handler):  # 50 ms an image; after the 40th, none until the first run is dead
            served[0] += 1
            if served[0] > 40:
                released.wait(60)
            time.sleep(0.05)
            send_body(handler, data, "image/jpeg")
        return route

    lines, texts, images = [], {}, {}
    for i, data in enumerate(made):
        image_server.routes[f"/slow-{i}.jpg"] = slow(data)
        lines.append({"id": f"image-{i:03d}", "url": image_server.url(f"/slow-{i}.jpg")})
        images[lines[-1]["id"]] = data_uri(data)
        if i % 2:
            lines.append({"id": f"text-{i:03d}", "text": f"a photo of thing number {i}"})
            texts[lines[-1]["id"]] = lines[-1]["text"]
    lines.append({"id": "nothing"})
    assert len(lines) == 181
    source = tmp_path / "items.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out.parquet"
    args = (str(source), "-o", str(out), "--batch-size", "8", "--concurrency", "1", "--flush-rows", "8")

    run = subprocess.Popen([sys.executable, "-m", "clip_service.cli", "embed", *args, "--ray", ray_address], cwd=ROOT,
                           env=environment(**model_env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while written(out) < 16 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
        released.set()
    first = by_id(pq.read_table(out))
    before = len(first)
    assert 16 <= before < 181, f"the run was meant to be killed midway ({before} rows written)"

    # Again, on a Ray of its own this time (no ADDRESS, no RAY_ADDRESS): started, used and stopped by the command.
    again = run_cli(*args, "--ray", env=model_env)
    assert again.returncode == 0, again.stderr[-3000:]
    failed = 0 if "nothing" in first else 1
    assert (f"181 items: {181 - before - failed} embedded, {failed} failed, {before} written before"
            in last_line(again.stderr))
    assert not list(out.glob(".*.tmp"))
    expected = service_outcomes(service, texts, images)
    expected["nothing"] = (None, "invalid_input")
    assert_same(by_id(pq.read_table(out)), expected)  # each id exactly once, the service's vectors


@pytest.mark.parametrize("env, says, status", [
    ({"CLIP_MAX_BATCH": "lots"}, "CLIP_MAX_BATCH='lots' is invalid", 78),
    ({"CLIP_MODEL": "ViT-B-32", "CLIP_PRETRAINED": "/no/such/weights.pt"}, "cannot load model", 3),
])
def test_a_setting_or_model_that_cannot_be_used_is_one_line_and_the_services_status(env, says, status, ray_address,
                                                                                     model_env, tmp_path):
    source = tmp_path / "items.jsonl"
    source.write_text('{"id": "a", "text": "a cat"}\n')
    out = tmp_path / "out.parquet"
    # A bad setting is refused in the driver: before INPUT is read and before Ray is reached (nothing listens
    # at this address). Weights that cannot load are found by one task on the workers, before any actor.
    address = f"127.0.0.1:{free_port()}" if status == 78 else ray_address
    done = run_cli(str(source), "-o", str(out), "--ray", address, env={**model_env, **env})
    assert done.returncode == status, done.stderr[-3000:]
    line = last_line(done.stderr)
    assert line.startswith("clip-service embed: clip-service cannot start: ") and says in line
    if status == 78:
        assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()
    else:
        assert written(out) == 0
