"""Vector formats (#31): every route's ``encoding``, /v1's ``embedding_types``, ``dimensions``, the client and the
bulk command's ``--dtype``, each decoding back to the float vector within its stated error."""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import openai
import pyarrow.parquet as pq
import pytest
import requests

from clip_service import cli, encodings
from clip_service.bulk.store import ModelStamp, PartStore, Row
from clip_service.client import ClipClient

from .helpers import TINY_MODEL, assert_envelope, assert_openai_error, worker_pids
from .live_server import LiveServer
from .support.gunicorn import GunicornProcess

FORMATS = encodings.FORMATS
TEXTS = ["a photo of a cat", "a cup of coffee", "", "an astronaut on a horse"]
PHOTOS = ("chelsea_0.jpg", "camera.png", "coffee_0.jpg")


def unit_rows(count: int, dims: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, dims)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def decoded(value, fmt: str, dims: int) -> np.ndarray:
    """An answer's vector in ``fmt`` back to float32."""
    return encodings.to_float(encodings.decode(value, fmt, dims), fmt, dims)


def assert_within_stated_error(got: np.ndarray, floats: np.ndarray, fmt: str) -> None:
    """``got`` (decoded) is ``floats`` within what encodings.py promises for ``fmt``."""
    if fmt in encodings.BINARY_FORMATS:
        nonzero = floats != 0
        assert np.array_equal(np.sign(got)[nonzero], np.sign(floats)[nonzero])  # the sign, nothing more
        assert np.all(got[~nonzero] < 0)  # a component of exactly 0 is a 0 bit
    elif fmt in ("int8", "uint8"):
        kept = np.abs(floats) <= 0.49
        assert np.abs(got - floats)[kept].max(initial=0) <= 0.5 / encodings.INT8_SCALE + 1e-9  # half a step
    elif fmt == "float16":
        assert np.abs(got - floats).max() <= 1e-3
    else:
        assert np.array_equal(got, floats)  # float and base64: exact


def float_answer(client, path: str, body: dict) -> dict:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


# --- the formats themselves -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_decodes_to_the_float_vector_within_its_stated_error(fmt):
    vectors = unit_rows(64, 512)
    for row, value in zip(vectors, encodings.to_json(vectors, fmt)):
        wire = json.loads(json.dumps(value if isinstance(value, str) else value.tolist()))  # as JSON carries it
        assert_within_stated_error(decoded(wire, fmt, 512), row, fmt)


def test_the_int8_scale_clips_only_beyond_half_and_the_edges_are_exact():
    edge = np.zeros((1, 8), dtype=np.float32)
    edge[0, :6] = [0.75, -0.75, 0.5, -0.5, 127 / 256, -0.001]
    assert encodings.quantize(edge, "int8").tolist() == [[127, -128, 127, -128, 127, 0, 0, 0]]
    assert encodings.quantize(edge, "uint8").tolist() == [[255, 0, 255, 0, 255, 128, 128, 128]]
    # A value exactly half a step between two levels goes to the even one (numpy's rint), on every machine.
    assert encodings.quantize(np.array([[1.5 / 256, 2.5 / 256]], dtype=np.float32), "int8").tolist() == [[2, 2]]


def test_binary_packs_eight_signs_a_byte_first_dimension_in_the_top_bit_as_cohere_does():
    vector = np.array([[0.5, -0.5, 0.5, -0.5, 0, 0, 0, 0.5, -0.1, 0.1, 0, 0, 0, 0, 0, 0]], dtype=np.float32)
    assert encodings.quantize(vector, "ubinary").tolist() == [[0b10100001, 0b01000000]]
    assert encodings.quantize(vector, "binary").tolist() == [[0b10100001 - 128, 0b01000000 - 128]]
    assert encodings.width("binary", 512) == 64


@pytest.mark.parametrize("fmt, value, says", [
    ("base64", [0.1] * 32, "base64 string"),
    ("base64", "not base64!", "not valid base64"),
    ("float16", base64.b64encode(b"\0" * 10).decode(), "10 bytes"),
    ("int8", [0] * 31, "31 values"),
    ("int8", [200] + [0] * 31, "not a int8"),
    ("ubinary", [-1, 0, 0, 0], "not a uint8"),
])
def test_a_value_that_is_not_a_vector_of_the_format_is_refused(fmt, value, says):
    with pytest.raises(ValueError, match=says):
        encodings.decode(value, fmt, 32)


# --- every embedding route --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_embed_text_answers_each_format_within_its_error_of_the_float_answer(client, tiny_embedder, fmt):
    floats = np.asarray(float_answer(client, "/embed/text", {"texts": TEXTS})["embeddings"], dtype=np.float32)
    body = float_answer(client, "/embed/text", {"texts": TEXTS, "encoding": fmt})
    assert body["dimensions"] == tiny_embedder.dimensions and len(body["embeddings"]) == len(TEXTS)
    got = np.stack([decoded(v, fmt, body["dimensions"]) for v in body["embeddings"]])
    assert_within_stated_error(got, floats, fmt)
    # The values are the formula's, bit for bit: what another instance or the client computes.
    expected = encodings.quantize(floats, fmt)
    assert np.array_equal(np.stack([encodings.decode(v, fmt, body["dimensions"]) for v in body["embeddings"]]),
                          expected)


def test_the_float_answer_is_todays_bytes(client):
    default = client.post("/embed/text", json={"texts": TEXTS})
    named = client.post("/embed/text", json={"texts": TEXTS, "encoding": "float"})
    assert default.data == named.data
    assert all(isinstance(x, float) for x in default.get_json()["embeddings"][0])


@pytest.mark.parametrize("fmt", FORMATS)
def test_failed_images_keep_an_empty_slot_and_the_same_errors_in_every_format(client, image_server, fmt):
    urls = [image_server.url("/chelsea_0.jpg"), image_server.url("/missing.png"), image_server.url("/camera.png")]
    floats = float_answer(client, "/embed/image", {"urls": urls})
    body = float_answer(client, "/embed/image", {"urls": urls, "encoding": fmt})
    assert body["embeddings"][1] == [] and body["errors"] == floats["errors"]
    assert [e["code"] for e in body["errors"]] == ["upstream_status"]
    for i in (0, 2):
        assert_within_stated_error(decoded(body["embeddings"][i], fmt, body["dimensions"]),
                                   np.asarray(floats["embeddings"][i], dtype=np.float32), fmt)


@pytest.mark.parametrize("fmt", ["base64", "int8", "binary"])
def test_embed_mixed_encodes_texts_and_images_alike(client, image_server, fmt):
    request = {"texts": TEXTS[:2], "urls": [image_server.url("/missing.png"), image_server.url("/coffee_0.jpg")]}
    floats = float_answer(client, "/embed/mixed", request)
    body = float_answer(client, "/embed/mixed", {**request, "encoding": fmt})
    assert body["image_embeddings"][0] == [] and body["errors"] == floats["errors"]
    for key, rows in (("text_embeddings", [0, 1]), ("image_embeddings", [1])):
        for i in rows:
            assert_within_stated_error(decoded(body[key][i], fmt, body["dimensions"]),
                                       np.asarray(floats[key][i], dtype=np.float32), fmt)


@pytest.mark.parametrize("fmt", ["ubinary", "float16"])
def test_uploads_take_encoding_and_dimensions_as_form_fields(client, photos, tiny_embedder, fmt):
    def upload(**form):
        data = {"images": [(io.BytesIO(photos[name]), name) for name in PHOTOS], **form}
        return client.post("/embed/image", data=data, content_type="multipart/form-data")

    floats = upload().get_json()
    body = upload(encoding=fmt, dimensions=str(tiny_embedder.dimensions)).get_json()
    for value, float_vector in zip(body["embeddings"], floats["embeddings"]):
        assert_within_stated_error(decoded(value, fmt, body["dimensions"]), np.asarray(float_vector, np.float32), fmt)
    assert "dimensions" in assert_envelope(upload(dimensions="16"), 422)["errors"]
    assert "encoding" in assert_envelope(upload(encoding="int4"), 422)["errors"]
    assert "_schema" in assert_envelope(upload(other="1"), 422)["errors"]


@pytest.mark.parametrize("value", ["int4", "FLOAT", None, 8, ["int8"]])
def test_an_unknown_encoding_is_422_naming_the_field(client, value):
    body = assert_envelope(client.post("/embed/text", json={"texts": ["a"], "encoding": value}), 422)
    assert list(body["errors"]) == ["encoding"]


def test_vectorize_keeps_weaviates_float_lists(make_app):
    client = make_app(weaviate=True).test_client()
    body = client.post("/vectorize", json={"texts": ["a cat"]}).get_json()
    assert all(isinstance(x, float) for x in body["textVectors"][0])
    # Weaviate sends no encoding; a field it might add later is ignored, as before, not obeyed.
    again = client.post("/vectorize", json={"texts": ["a cat"], "encoding": "int8"}).get_json()
    assert again == body


# --- dimensions ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, body", [
    ("/embed/text", {"texts": ["a cat"]}),
    ("/embed/image", {"urls": ["data:image/png;base64,iVBORw0KGgo="]}),
    ("/embed/mixed", {"texts": ["a cat"]}),
])
@pytest.mark.parametrize("dimensions", [1, 16, 31, 33, 512, 1536])
def test_dimensions_other_than_the_models_are_422_saying_why(client, tiny_embedder, path, body, dimensions):
    answer = assert_envelope(client.post(path, json={**body, "dimensions": dimensions}), 422)
    (message,) = answer["errors"]["dimensions"]
    assert f"have {tiny_embedder.dimensions} dimensions" in message and "not trained" in message
    assert client.post(path, json={**body, "dimensions": tiny_embedder.dimensions}).status_code == 200


@pytest.mark.parametrize("dimensions", [0, -1, "32", 32.0, True])
def test_dimensions_must_be_a_positive_integer(client, dimensions):
    assert "dimensions" in assert_envelope(client.post("/embed/text", json={"texts": ["a"], "dimensions": dimensions}),
                                           422)["errors"]


def test_dimensions_under_v1_is_openais_400_with_the_same_reason(client, tiny_embedder):
    response = client.post("/v1/embeddings", json={"model": TINY_MODEL, "input": "a cat", "dimensions": 16})
    error = assert_openai_error(response, 400, param="dimensions", code="unsupported_dimensions")
    assert "not trained" in error["message"]


# --- /v1/embeddings: embedding_types -------------------------------------------------------------------

def v1(client, **body) -> dict:
    return float_answer(client, "/v1/embeddings", {"model": TINY_MODEL, "input": TEXTS, **body})


def test_embedding_types_with_several_types_answer_an_object_per_item(client):
    floats = np.asarray([d["embedding"] for d in v1(client)["data"]], dtype=np.float32)
    types = ["float", "int8", "uint8", "binary", "ubinary", "base64", "float16"]
    body = v1(client, embedding_types=types)
    for item, expected in zip(body["data"], floats):
        assert list(item["embedding"]) == types
        for fmt, value in item["embedding"].items():
            assert_within_stated_error(decoded(value, fmt, len(expected)), expected, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_one_embedding_type_answers_the_bare_vector(client, fmt):
    floats = np.asarray([d["embedding"] for d in v1(client)["data"]], dtype=np.float32)
    body = v1(client, embedding_types=[fmt], encoding_format="base64")  # encoding_format is not read then
    got = np.stack([decoded(d["embedding"], fmt, floats.shape[1]) for d in body["data"]])
    assert_within_stated_error(got, floats, fmt)


@pytest.mark.parametrize("types, param", [([], "embedding_types"), (["int4"], "embedding_types[0]"),
                                          (["int8", "int8"], "embedding_types"), ("int8", "embedding_types"),
                                          ([None], "embedding_types[0]")])
def test_bad_embedding_types_are_openais_400(client, types, param):
    response = client.post("/v1/embeddings", json={"model": TINY_MODEL, "input": "a", "embedding_types": types})
    assert_openai_error(response, 400, param=param)


def test_the_openai_package_still_decodes_base64_and_passes_embedding_types_through(shared_app, app):
    with LiveServer(shared_app) as live:
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=30)
        plain = client.embeddings.create(model=TINY_MODEL, input=TEXTS)  # the package asks for base64 itself
        floats = np.asarray([d.embedding for d in plain.data], dtype=np.float32)
        expected = np.asarray(v1(app.test_client())["data"][0]["embedding"], dtype=np.float32)
        assert np.array_equal(floats[0], expected)
        explicit = client.embeddings.create(model=TINY_MODEL, input=TEXTS, encoding_format="base64")
        assert np.array_equal(np.stack([decoded(d.embedding, "base64", floats.shape[1]) for d in explicit.data]),
                              floats)
        several = client.embeddings.create(model=TINY_MODEL, input=TEXTS,
                                           extra_body={"embedding_types": ["int8", "ubinary"]})
        assert [decoded(d.embedding["int8"], "int8", floats.shape[1]).shape for d in several.data] == \
            [floats.shape[1:]] * len(TEXTS)


def test_the_document_shows_an_example_of_each_format(client):
    spec = client.get("/openapi.json").get_json()
    for path in ("/embed/text", "/embed/image", "/embed/mixed"):
        examples = spec["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]["examples"]
        assert set(examples) == set(FORMATS)
        key = "text_embeddings" if path == "/embed/mixed" else "embeddings"
        for fmt, example in examples.items():
            vector = example["value"][key][0]
            assert encodings.decode(vector, fmt, example["value"]["dimensions"]) is not None
    request = spec["components"]["schemas"]["TextEmbedRequest"]["properties"]
    assert request["encoding"]["enum"] == list(FORMATS) and request["encoding"]["default"] == "float"
    v1_examples = spec["paths"]["/v1/embeddings"]["post"]["responses"]["200"]["content"]["application/json"]
    assert {"float", "base64", "embedding_types int8", "embedding_types several"} <= set(v1_examples["examples"])


# --- the cache keeps float32 once ----------------------------------------------------------------------

def test_a_vector_cached_in_one_format_serves_every_format(make_app, monkeypatch):
    app = make_app(cache_mb=8)
    client = app.test_client()
    embedder = app.extensions["clip_pipeline"].embedder
    passes: list[int] = []
    # The embedder is the session's shared one: its metrics callback is put back after the test.
    monkeypatch.setattr(embedder, "on_batch", lambda modality, size, seconds: passes.append(size))
    int8 = float_answer(client, "/embed/text", {"texts": TEXTS, "encoding": "int8"})
    assert sum(passes) == len(TEXTS)
    floats = np.asarray(float_answer(client, "/embed/text", {"texts": TEXTS})["embeddings"], dtype=np.float32)
    for fmt in FORMATS:
        float_answer(client, "/embed/text", {"texts": TEXTS, "encoding": fmt})
    v1(client, embedding_types=list(FORMATS))
    assert sum(passes) == len(TEXTS)  # one pass, at the first request: every later format came from the cache
    assert int8["embeddings"] == encodings.quantize(floats, "int8").tolist()


# --- the client -----------------------------------------------------------------------------------------

@pytest.fixture
def live(app):
    with LiveServer(app) as server:
        yield server


@pytest.mark.parametrize("dtype, fmt", [("float32", "float"), ("float16", "float16"), ("int8", "int8"),
                                        ("uint8", "uint8"), ("binary", "binary"), ("ubinary", "ubinary")])
def test_the_client_returns_arrays_of_the_asked_dtype(live, client, image_server, dtype, fmt):
    floats = np.asarray(float_answer(client, "/embed/text", {"texts": TEXTS})["embeddings"], dtype=np.float32)
    urls = [image_server.url("/coffee_0.jpg"), image_server.url("/missing.png")]
    image_floats = np.asarray(float_answer(client, "/embed/image", {"urls": urls[:1]})["embeddings"], np.float32)
    with ClipClient(live.url) as clip:
        texts = clip.embed_texts(TEXTS, dtype=dtype)
        images = clip.embed_images(urls, dtype=dtype)
    assert texts.dtype == dtype and texts.vectors.dtype == encodings.DTYPES[fmt]
    assert texts.dimensions == floats.shape[1] == images.dimensions
    assert np.array_equal(texts.vectors, encodings.quantize(floats, fmt))
    assert np.array_equal(images.vectors[0], encodings.quantize(image_floats, fmt)[0])
    assert [(e.index, e.code) for e in images.errors] == [(1, "upstream_status")] and images.ok.tolist() == [True, False]
    if dtype in ("float32", "float16"):
        assert np.isnan(images.vectors[1]).all()
    else:
        assert not images.vectors[1].any()


def test_the_client_asks_for_base64_float32_by_default(app, client):
    sent: list[dict] = []

    def recording(environ, start_response):
        if environ["PATH_INFO"] == "/embed/text":
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            sent.append(json.loads(body))
            environ["wsgi.input"] = io.BytesIO(body)
        return app(environ, start_response)

    floats = np.asarray(float_answer(client, "/embed/text", {"texts": TEXTS})["embeddings"], dtype=np.float32)
    with LiveServer(recording) as server, ClipClient(server.url) as clip:
        result = clip.embed_texts(TEXTS)
    assert [body.get("encoding") for body in sent] == ["base64"]
    assert result.vectors.dtype == np.float32 and np.array_equal(result.vectors, floats)  # lossless


def test_against_a_service_without_encodings_the_client_computes_the_same_values(live, client):
    floats = np.asarray(float_answer(client, "/embed/text", {"texts": TEXTS})["embeddings"], dtype=np.float32)
    with ClipClient(live.url) as clip:
        clip._limits = replace(clip.limits(), encodings=frozenset())  # as an older service's document has it
        for dtype, fmt in (("float32", "float"), ("int8", "int8"), ("binary", "binary")):
            assert np.array_equal(clip.embed_texts(TEXTS, dtype=dtype).vectors, encodings.quantize(floats, fmt))


def test_the_client_refuses_an_unknown_dtype(live):
    with ClipClient(live.url) as clip, pytest.raises(ValueError, match="dtype must be one of"):
        clip.embed_texts(["a"], dtype="float64")


# --- the bulk command ------------------------------------------------------------------------------------

BULK_FORMATS = {"float32": ("float", "float"), "float16": ("float16", "halffloat"), "int8": ("int8", "int8"),
                "binary": ("ubinary", "uint8")}



@pytest.mark.parametrize("mode", ["url", "in-process"])
@pytest.mark.parametrize("dtype", list(BULK_FORMATS))
def test_the_bulk_command_writes_and_reads_back_each_dtype(mode, dtype, live, client, in_process, tmp_path, capsys):
    texts = [text for text in TEXTS if text]  # an empty row is an error row in a table
    table = tmp_path / "texts.jsonl"
    table.write_text("".join(json.dumps({"id": f"t{i}", "text": text}) + "\n" for i, text in enumerate(texts)))
    floats = np.asarray(float_answer(client, "/embed/text", {"texts": texts})["embeddings"], dtype=np.float32)
    fmt, arrow = BULK_FORMATS[dtype]
    expected = encodings.quantize(floats, fmt)
    out = tmp_path / "out.parquet"
    where = ["--url", live.url] if mode == "url" else []
    assert cli.main(["embed", str(table), "-o", str(out), "--dtype", dtype, *where]) == 0, capsys.readouterr().err
    schema = pq.read_schema(out / "part-000000.parquet")
    assert str(schema.field("vector").type) == f"fixed_size_list<element: {arrow}>[{expected.shape[1]}]"
    assert json.loads(schema.metadata[b"clip_service"])["dtype"] == dtype
    assert schema.field("vector").metadata[b"clip_service.dtype"] == dtype.encode()
    written = {row["id"]: row["vector"] for row in pq.read_table(out).to_pylist()}
    got = np.asarray([written[f"t{i}"] for i in range(len(texts))], dtype=expected.dtype)
    if mode == "in-process" and fmt in ("float", "float16"):
        np.testing.assert_allclose(got, expected, atol=1e-6)  # another process's forward pass: the last bit may differ
    else:
        assert np.array_equal(got, expected)
    # The .npy output holds the same values in the same dtype.
    npy = tmp_path / "out.npy"
    assert cli.main(["embed", str(table), "-o", str(npy), "--dtype", dtype, *where]) == 0
    vectors = np.load(npy)
    assert vectors.dtype == expected.dtype and np.array_equal(vectors, got)


def test_resuming_with_another_dtype_is_refused_in_one_line(live, tmp_path, capsys):
    table = tmp_path / "texts.jsonl"
    table.write_text(json.dumps({"id": "a", "text": "a cat"}) + "\n")
    out = tmp_path / "out.parquet"
    assert cli.main(["embed", str(table), "-o", str(out), "--url", live.url, "--dtype", "int8"]) == 0
    capsys.readouterr()
    assert cli.main(["embed", str(table), "-o", str(out), "--url", live.url]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "holds int8 vectors" in lines[0] and "--dtype float32" in lines[0]
    assert cli.main(["embed", str(table), "-o", str(out), "--url", live.url, "--dtype", "int8"]) == 0


def test_parts_written_before_dtype_existed_are_float32(tmp_path):
    store = PartStore(tmp_path / "out.parquet").open()
    store.check_model(ModelStamp("m", "p", 8))
    store.write([Row("a", "text", np.full(8, 8 ** -0.5, dtype=np.float32))])
    store.close()
    again = PartStore(tmp_path / "out.parquet").open()
    assert again.stamp.dtype == "float32"
    again.check_model(ModelStamp("m", "p", 8, "float32"))


def test_the_store_converts_float_rows_and_keeps_rows_already_in_its_dtype(tmp_path):
    vectors = unit_rows(2, 16)
    store = PartStore(tmp_path / "out.parquet").open()
    store.check_model(ModelStamp("m", "p", 16, "binary"))
    store.write([Row("float", "text", vectors[0]), Row("bits", "text", encodings.quantize(vectors[1:], "ubinary")[0]),
                 Row("failed", "text", None, "not_an_image", "no")])
    store.close()
    rows = {r["id"]: r["vector"] for r in pq.read_table(tmp_path / "out.parquet").to_pylist()}
    assert rows["float"] == encodings.quantize(vectors[:1], "ubinary")[0].tolist()
    assert rows["bits"] == encodings.quantize(vectors[1:], "ubinary")[0].tolist() and rows["failed"] is None


# --- identical bytes from two workers (a real Gunicorn) -----------------------------------------------------

@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_two_workers_answer_identical_bytes_in_every_format(tiny_model_dir, tmp_path):
    server = GunicornProcess({
        "CLIP_MODEL": f"local-dir:{tiny_model_dir}",
        "CLIP_PRETRAINED": str(tiny_model_dir / "open_clip_pytorch_model.bin"),
        "CLIP_WORKERS": "2", "CLIP_THREADS": "4", "CLIP_TORCH_THREADS": "1",
        # One forward pass per request: the same texts go through the model in a batch of the same shape.
        "CLIP_BATCHING": "false",
    }, tmp_path / "gunicorn.log")
    bodies = {fmt: {"texts": TEXTS, "encoding": fmt} for fmt in FORMATS}

    def ask(fmt):
        with requests.Session() as session:  # a fresh connection each time, so either worker may take it
            if fmt == "v1":
                return fmt, session.post(server.base + "/v1/embeddings", json=v1_body, timeout=60)
            return fmt, session.post(server.base + "/embed/text", json=bodies[fmt], timeout=60)

    try:
        server.wait_healthy()
        model = requests.get(server.base + "/v1/models", timeout=10).json()["data"][0]["id"]
        v1_body = {"model": model, "input": TEXTS, "embedding_types": list(FORMATS)}
        answers: dict[str, set[bytes]] = {fmt: set() for fmt in (*FORMATS, "v1")}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with ThreadPoolExecutor(8) as pool:
                for fmt, response in pool.map(ask, [*answers] * 3):
                    assert response.status_code == 200, response.text
                    answers[fmt].add(response.content)
            time.sleep(0.2)  # the access log line is written after the response
            log = server.output()
            if len(worker_pids(log, "/embed/text")) == 2 and len(worker_pids(log, "/v1/embeddings")) == 2:
                break
        log = server.output()
        assert len(worker_pids(log, "/embed/text")) == 2 and len(worker_pids(log, "/v1/embeddings")) == 2, log[-3000:]
        assert {fmt: len(found) for fmt, found in answers.items()} == {fmt: 1 for fmt in answers}
    finally:
        server.stop()
