"""Fast loading gives open_clip's model bit for bit, takes what open_clip takes, and refuses what it refuses."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from clip_service.model import convert, converted, empty_model, loading, mapped_pages, prepacked, tags
from clip_service.model.embedder import ClipEmbedder
from clip_service.model.errors import ModelLoadError

from .helpers import TESTS, TINY_MODEL
from .support.checkpoints import write_random_checkpoint

ROOT = TESTS.parent
TIMM_MODEL = "clip-service-tiny-timm"  # a timm image tower: built empty like open_clip's own
open_clip.add_model_config(TESTS / "model_configs" / f"{TIMM_MODEL}.json")

TEXTS = ["a photo of a cat", "", "two dogs playing with a red ball in a park at sunset"]


def _image() -> Image.Image:
    return Image.effect_mandelbrot((300, 200), (-2, -1.2, 1, 1.2), 40).convert("RGB")


def _reference(model_name: str, pretrained: str, **kwargs):
    """open_clip's own model and inference transform, as the embedder holds a model (eval, no autograd)."""
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, **kwargs)
    return model.eval().requires_grad_(False), preprocess


def _vectors(model, preprocess, model_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = open_clip.get_tokenizer(model_name)(TEXTS)
    with torch.inference_mode():
        return (model.encode_text(tokens, normalize=True),
                model.encode_image(preprocess(_image())[None], normalize=True))


def _assert_same_model(loaded: loading.LoadedModel, reference, model_name: str) -> None:
    model, reference_preprocess = reference
    ours, theirs = loaded.model.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in ours)
    buffers, reference_buffers = dict(loaded.model.named_buffers()), dict(model.named_buffers())
    assert buffers.keys() == reference_buffers.keys()
    assert all(torch.equal(buffers[k], reference_buffers[k]) for k in buffers)
    assert loaded.model.visual.preprocess_cfg == model.visual.preprocess_cfg
    assert repr(loaded.preprocess) == repr(reference_preprocess)
    for mine, open_clips in zip(_vectors(loaded.model, loaded.preprocess, model_name),
                                _vectors(model, reference_preprocess, model_name)):
        assert torch.equal(mine, open_clips)  # bit for bit


def _forbid_open_clip_loading(monkeypatch) -> None:
    """Fail any load that goes through open_clip's create_model (which initialises at random)."""
    def refuse(*args, **kwargs):
        raise AssertionError("open_clip.create_model was called: the fast path was not taken")

    monkeypatch.setattr(open_clip.factory, "create_model", refuse)
    monkeypatch.setattr(open_clip, "create_model_and_transforms", refuse)


def _no_meta_tensors(model) -> bool:
    return not any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def test_tiny_model_is_open_clips_bit_for_bit(tiny_checkpoint):
    reference = _reference(TINY_MODEL, str(tiny_checkpoint))
    loaded = loading.load_model(TINY_MODEL, str(tiny_checkpoint), "cpu", prepack=False)
    _assert_same_model(loaded, reference, TINY_MODEL)


def test_the_fast_path_never_builds_a_random_model(monkeypatch, tiny_checkpoint):
    _forbid_open_clip_loading(monkeypatch)
    loaded = loading.load_model(TINY_MODEL, str(tiny_checkpoint), "cpu", prepack=False)
    assert set(loaded.seconds) >= {"build", "load"}
    assert _no_meta_tensors(loaded.model)


def test_parameters_are_built_on_meta_and_buffers_for_real():
    model = empty_model.build_empty(TINY_MODEL, quick_gelu=False)
    assert all(p.is_meta for p in model.parameters())
    torch.manual_seed(0)
    expected_mask = open_clip.create_model(TINY_MODEL).attn_mask
    assert not model.attn_mask.is_meta and torch.equal(model.attn_mask, expected_mask)


def test_prepacked_load_gives_the_vectors_of_open_clip_prepacked(tiny_checkpoint):
    model, preprocess = _reference(TINY_MODEL, str(tiny_checkpoint))
    assert prepacked.prepack(model) == 2
    loaded = loading.load_model(TINY_MODEL, str(tiny_checkpoint), "cpu", prepack=True, precision="fp32")
    assert sum(isinstance(m, prepacked.PrepackedSelfAttention) for m in loaded.model.modules()) == 2
    assert _no_meta_tensors(loaded.model)
    for mine, theirs in zip(_vectors(loaded.model, loaded.preprocess, TINY_MODEL),
                            _vectors(model, preprocess, TINY_MODEL)):
        assert torch.equal(mine, theirs)


def test_loaded_weights_do_not_stay_mapped_from_the_file(tmp_path):
    checkpoint = write_random_checkpoint(TINY_MODEL, tmp_path / "mapped-tiny.pt")
    loaded = loading.load_model(TINY_MODEL, str(checkpoint), "cpu", prepack=True)
    assert "mapped-tiny.pt" not in Path("/proc/self/maps").read_text()
    # The weights are the process's own: a checkpoint rewritten on disk cannot change them.
    before = _vectors(loaded.model, loaded.preprocess, TINY_MODEL)
    checkpoint.write_bytes(b"\0" * checkpoint.stat().st_size)
    after = _vectors(loaded.model, loaded.preprocess, TINY_MODEL)
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def _plain(state_dict):
    return state_dict


def _wrapped_with_module_prefix(state_dict):
    return {"state_dict": {f"module.{k}": v for k, v in state_dict.items()}, "epoch": 3}


def _half_precision(state_dict):
    return {k: v.half() for k, v in state_dict.items()}


def _logit_scale_as_vector(state_dict):
    return {**state_dict, "logit_scale": state_dict["logit_scale"].reshape(1)}


@pytest.mark.parametrize("form, suffix, save", [
    (_plain, ".pt", torch.save),
    (_wrapped_with_module_prefix, ".pt", torch.save),
    (_half_precision, ".pt", torch.save),
    (_logit_scale_as_vector, ".pt", torch.save),
    (_plain, ".pt", lambda sd, path: torch.save(sd, path, _use_new_zipfile_serialization=False)),  # not mappable
    (_plain, ".safetensors", lambda sd, path: save_file({k: v.contiguous() for k, v in sd.items()}, path)),
], ids=["plain", "state_dict-module-prefix", "fp16", "logit-scale-1d", "legacy-format", "safetensors"])
def test_every_checkpoint_form_open_clip_takes_gives_its_model(monkeypatch, tmp_path, form, suffix, save):
    torch.manual_seed(1)
    state_dict = open_clip.create_model(TINY_MODEL).state_dict()
    path = tmp_path / f"checkpoint{suffix}"
    save(form(state_dict), str(path))
    reference = _reference(TINY_MODEL, str(path))
    _forbid_open_clip_loading(monkeypatch)
    _assert_same_model(loading.load_model(TINY_MODEL, str(path), "cpu", prepack=False), reference, TINY_MODEL)


def _one_line_refusal(model_name: str, path: Path) -> str:
    with pytest.raises(ModelLoadError) as err:
        ClipEmbedder.load(model_name, str(path), "cpu")
    message = str(err.value)
    assert "\n" not in message and path.name in message and "CLIP_PRETRAINED" in message
    return message


def test_a_checkpoint_of_another_architecture_is_refused_in_one_line(tiny_checkpoint):
    message = _one_line_refusal("ViT-B-32", tiny_checkpoint)
    assert "ViT-B-32" in message and "does not fit this architecture" in message and "missing" in message


@pytest.mark.parametrize("suffix, content", [
    (".pt", b"this is not a checkpoint"),
    (".pt", b"PK\x03\x04 a zip header and then nothing"),
    (".safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      "),
])
def test_a_corrupt_checkpoint_is_refused_in_one_line(tmp_path, suffix, content):
    bad = tmp_path / f"corrupt{suffix}"
    bad.write_bytes(content)
    _one_line_refusal(TINY_MODEL, bad)


def test_a_truncated_checkpoint_is_refused_in_one_line(tmp_path, tiny_checkpoint):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[: tiny_checkpoint.stat().st_size // 2])
    _one_line_refusal(TINY_MODEL, truncated)


@pytest.fixture
def quick_gelu_tag(monkeypatch, tiny_checkpoint):
    """A pretrained tag of the tiny model, trained with QuickGELU like laion400m_e32, its download simulated."""
    tag = {"hf_hub": "example/tiny-quickgelu/", "quick_gelu": True, "interpolation": "bilinear",
           "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY_MODEL, {"quickgelu_tag": tag})
    downloads = []

    def download(cfg, cache_dir=None):
        downloads.append(cfg)
        return str(tiny_checkpoint)

    monkeypatch.setattr(open_clip.factory, "download_pretrained", download)
    return downloads


def _activations(model) -> set[str]:
    return {type(m).__name__ for m in model.modules() if "GELU" in type(m).__name__}


def test_a_tags_quick_gelu_and_preprocessing_are_applied(quick_gelu_tag):
    reference = _reference(TINY_MODEL, "quickgelu-tag", force_quick_gelu=True)
    loaded = loading.load_model(TINY_MODEL, "quickgelu-tag", "cpu", prepack=False)
    assert len(quick_gelu_tag) == 2  # open_clip's download, then ours: the same helper
    assert _activations(loaded.model) == {"QuickGELU"}
    assert loaded.model.visual.preprocess_cfg["interpolation"] == "bilinear"
    _assert_same_model(loaded, reference, TINY_MODEL)
    prepacked = loading.load_model(TINY_MODEL, "quickgelu-tag", "cpu", precision="fp32")  # QuickGELU fused in
    assert _activations(prepacked.model) == {"QuickGELU"}
    assert prepacked.model.transformer.resblocks[0].mlp.c_fc.activation == "swish"
    for mine, open_clips in zip(_vectors(prepacked.model, prepacked.preprocess, TINY_MODEL),
                                _vectors(reference[0], reference[1], TINY_MODEL)):
        assert (mine - open_clips).abs().max() <= 1e-5


@pytest.mark.e2e
def test_laion400m_e32_tag_is_built_with_quick_gelu_without_random_init(monkeypatch, tmp_path):
    """The default tag through the real registry, its download simulated as in test_embedder.py."""
    torch.manual_seed(0)
    checkpoint = tmp_path / "vit-quickgelu.pt"
    torch.save(open_clip.create_model("ViT-B-32-quickgelu").state_dict(), checkpoint)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, cache_dir=None: str(checkpoint))
    _forbid_open_clip_loading(monkeypatch)
    embedder = ClipEmbedder.load("ViT-B-32", "laion400m_e32", "cpu")
    assert _activations(embedder.model) == {"QuickGELU"} and embedder.prepacked_blocks == 24
    assert _no_meta_tensors(embedder.model)


def test_a_converted_file_round_trips_with_the_tags_settings(tmp_path, tiny_checkpoint, quick_gelu_tag, capsys):
    dest = tmp_path / "tiny.safetensors"
    assert convert.main(["--model", TINY_MODEL, "quickgelu-tag", str(dest)]) == 0
    assert "bitwise" in capsys.readouterr().out
    with safe_open(str(dest), framework="pt") as f:
        meta = f.metadata()
    assert meta[converted.META_MODEL] == TINY_MODEL and meta[converted.META_QUICK_GELU] == "1"
    assert meta[converted.META_PRETRAINED] == "quickgelu-tag"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~umask  # readable by the image's app user
    assert json.loads(meta[converted.META_PREPROCESS])["interpolation"] == "bilinear"

    # A path carries no tag: the header's settings are what make it the tag's model.
    assert tags.pretrained_label(TINY_MODEL, str(dest)) == "quickgelu-tag"  # what responses report
    loaded = loading.load_model(TINY_MODEL, str(dest), "cpu", prepack=False)
    assert _activations(loaded.model) == {"QuickGELU"}
    _assert_same_model(loaded, _reference(TINY_MODEL, "quickgelu-tag", force_quick_gelu=True), TINY_MODEL)


def test_a_converted_file_names_its_weights_by_their_digest_for_the_cache(tmp_path, tiny_checkpoint):
    from clip_service.cache.keys import weights_identity

    dest = tmp_path / "tiny.safetensors"
    assert convert.main(["--model", TINY_MODEL, str(tiny_checkpoint), str(dest)]) == 0
    with safe_open(str(dest), framework="pt") as f:
        recorded = f.metadata()[converted.META_WEIGHTS_SHA256]
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    assert recorded == converted.weights_digest(tensors)  # the digest is of exactly the weights in the file
    assert weights_identity(str(dest)) == f"weights-sha256:{recorded}"
    other = tmp_path / "other.safetensors"
    assert convert.main(["--model", TINY_MODEL, str(write_random_checkpoint(TINY_MODEL, tmp_path / "o.pt", seed=5)),
                         str(other)]) == 0
    assert weights_identity(str(other)) != weights_identity(str(dest))


def test_a_converted_file_serves_through_the_environment(monkeypatch, tmp_path, tiny_checkpoint, reference_model):
    from clip_service import create_app

    from .helpers import reference_text_vectors

    dest = tmp_path / "served.safetensors"
    assert convert.main(["--model", TINY_MODEL, str(tiny_checkpoint), str(dest)]) == 0
    monkeypatch.setenv("CLIP_MODEL", TINY_MODEL)
    monkeypatch.setenv("CLIP_PRETRAINED", str(dest))
    monkeypatch.setenv("CLIP_DEVICE", "cpu")
    monkeypatch.setenv("CLIP_PRECISION", "fp32")  # compared with open_clip's to 1e-5
    body = create_app({"TESTING": True}).test_client().post("/embed/text", json={"texts": TEXTS}).get_json()
    assert body["pretrained"] == "served.safetensors"
    assert abs(torch.tensor(body["embeddings"]) - torch.from_numpy(reference_text_vectors(reference_model, TEXTS))
               ).abs().max() <= 1e-5


def test_a_converted_file_is_refused_for_another_architecture(tmp_path, tiny_checkpoint):
    dest = tmp_path / "tiny-for-vit.safetensors"
    assert convert.main(["--model", TINY_MODEL, str(tiny_checkpoint), str(dest)]) == 0
    message = _one_line_refusal("ViT-B-32", dest)
    assert f"CLIP_MODEL={TINY_MODEL}" in message


@pytest.mark.parametrize("args", [
    ["--model", TINY_MODEL, "no-such-tag-or-file", "out.safetensors"],
    ["--model", TINY_MODEL, "TINY", "out.pt"],  # not a .safetensors name
])
def test_convert_refuses_bad_arguments(tmp_path, tiny_checkpoint, capsys, args):
    args = [str(tiny_checkpoint) if a == "TINY" else str(tmp_path / a) if a.startswith("out") else a for a in args]
    assert convert.main(args) == 1
    assert capsys.readouterr().err.startswith("convert: ")
    assert not list(tmp_path.iterdir())


def test_a_timm_tower_takes_the_fast_path_and_loads_as_open_clip_does(tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "timm.pt"
    torch.save(open_clip.create_model(TIMM_MODEL).state_dict(), checkpoint)
    assert loading._fast_path_covers(TIMM_MODEL, str(checkpoint))
    loaded = loading.load_model(TIMM_MODEL, str(checkpoint), "cpu", prepack=False)
    assert "build" in loaded.seconds
    _assert_same_model(loaded, _reference(TIMM_MODEL, str(checkpoint)), TIMM_MODEL)


def test_a_timm_tower_whose_empty_build_fails_loads_through_open_clip(tmp_path, monkeypatch, caplog):
    torch.manual_seed(0)
    checkpoint = tmp_path / "timm.pt"
    torch.save(open_clip.create_model(TIMM_MODEL).state_dict(), checkpoint)

    def fails(*args, **kwargs):
        raise TypeError("a timm layer this build does not cover")

    monkeypatch.setattr(loading, "build_empty", fails)
    loaded = loading.load_model(TIMM_MODEL, str(checkpoint), "cpu", prepack=False)
    assert set(loaded.seconds) == {"open_clip"}
    assert any("loading through open_clip" in r.getMessage() for r in caplog.records)
    _assert_same_model(loaded, _reference(TIMM_MODEL, str(checkpoint)), TIMM_MODEL)


def test_an_architecture_outside_the_fast_path_loads_through_open_clip(tiny_model_dir):
    spec = f"local-dir:{tiny_model_dir}"
    checkpoint = str(tiny_model_dir / "open_clip_pytorch_model.bin")
    assert not loading._fast_path_covers(spec, checkpoint)
    loaded = loading.load_model(spec, checkpoint, "cpu", prepack=False)
    assert set(loaded.seconds) == {"open_clip"}


def _python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_the_model_layer_imports_open_clip_without_the_compiler_stack_timm_or_the_hub(tiny_checkpoint):
    result = _python(f"""
        import sys
        import clip_service.model.embedder
        assert "open_clip" in sys.modules
        hidden = [m for m in ("torch._dynamo", "timm", "huggingface_hub", "sympy") if m in sys.modules]
        assert not hidden, hidden
        import open_clip
        open_clip.add_model_config("tests/model_configs/{TINY_MODEL}.json")
        from clip_service.model.embedder import ClipEmbedder
        embedder = ClipEmbedder.load("{TINY_MODEL}", {str(tiny_checkpoint)!r}, "cpu")
        assert embedder.probe(10)
        assert "torch._dynamo" not in sys.modules, "loading or inference imported the compiler"
        assert "huggingface_hub" not in sys.modules, "a local file needs no hub"

        # A tag's download goes through open_clip's hub client, as without the lean import.
        tag = {{"hf_hub": "example/tiny/", "quick_gelu": True}}
        open_clip.pretrained._PRETRAINED["{TINY_MODEL}"] = {{"some_tag": tag}}
        def download(cfg, cache_dir=None):
            assert open_clip.pretrained.has_hf_hub(), "the hub client was not back for the download"
            return {str(tiny_checkpoint)!r}
        open_clip.factory.download_pretrained = download
        embedder = ClipEmbedder.load("{TINY_MODEL}", "some_tag", "cpu")
        assert {{type(m).__name__ for m in embedder.model.modules()}} >= {{"QuickGELU"}}

        # The stand-in answers like torchvision's own helper, importing it on first call.
        roi_align = sys.modules["torchvision.ops.roi_align"]
        answer = roi_align.is_compile_supported("cpu")
        from torch._dynamo.utils import is_compile_supported
        assert answer == is_compile_supported("cpu")
        # timm comes back for the architectures that need it.
        from clip_service.model.private_apis import ensure_timm
        assert open_clip.timm_model.timm is None
        ensure_timm()
        assert open_clip.timm_model.timm is sys.modules["timm"]
        print("ok")
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_parallel_prepacking_leaves_no_thread_and_a_forked_child_can_go_parallel(tiny_checkpoint):
    """The Gunicorn fork hazard: no OpenMP pool may exist in the process that forks."""
    result = _python(f"""
        import os, time
        import torch
        torch.set_num_threads(1)  # as gunicorn.conf.py does in the master
        import open_clip
        open_clip.add_model_config("tests/model_configs/{TINY_MODEL}.json")
        from clip_service.model import loading, prepacked
        before = len(os.listdir("/proc/self/task"))
        model = loading.load_model("{TINY_MODEL}", {str(tiny_checkpoint)!r}, "cpu", prepack=False).model
        assert prepacked.prepack(model, threads=4) == 2
        for _ in range(40):  # a joined thread may take a moment to leave the task list
            if len(os.listdir("/proc/self/task")) == before:
                break
            time.sleep(0.05)
        assert len(os.listdir("/proc/self/task")) == before, "a prepacking thread outlived prepack()"
        pid = os.fork()
        if pid == 0:
            torch.set_num_threads(2)
            x = torch.randn(512, 512)
            (x @ x).sum().item()
            model.encode_text(torch.ones(2, 77, dtype=torch.long))
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        print("ok")
    """, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.e2e
def test_vit_b32_is_open_clips_bit_for_bit(monkeypatch, vit_b32_checkpoint):
    reference = _reference("ViT-B-32", str(vit_b32_checkpoint))
    _forbid_open_clip_loading(monkeypatch)
    loaded = loading.load_model("ViT-B-32", str(vit_b32_checkpoint), "cpu", prepack=False)
    assert _no_meta_tensors(loaded.model)
    _assert_same_model(loaded, reference, "ViT-B-32")


@pytest.mark.e2e
def test_vit_b32_prepacked_load_gives_open_clips_prepacked_vectors(vit_b32_checkpoint):
    model, preprocess = _reference("ViT-B-32", str(vit_b32_checkpoint))
    assert prepacked.prepack(model) == 24
    loaded = loading.load_model("ViT-B-32", str(vit_b32_checkpoint), "cpu", prepack=True, precision="fp32")
    assert sum(isinstance(m, prepacked.PrepackedSelfAttention) for m in loaded.model.modules()) == 24
    assert _no_meta_tensors(loaded.model)
    for mine, theirs in zip(_vectors(loaded.model, loaded.preprocess, "ViT-B-32"),
                            _vectors(model, preprocess, "ViT-B-32")):
        assert torch.equal(mine, theirs)


def _rss_file_kib() -> int:
    return int(Path("/proc/self/status").read_text().split("RssFile:")[1].split()[0])


def test_released_pages_of_a_mapped_checkpoint_leave_memory_and_read_back_the_same(tmp_path):
    weights = torch.randn(8 * 2**20)  # 32 MiB
    path = tmp_path / "big.pt"
    torch.save({"w": weights}, path)
    mapped = torch.load(path, mmap=True, weights_only=True)["w"]
    assert torch.equal(mapped, weights)  # every page read in
    pages = mapped_pages.MappedPages(str(path))
    assert pages.ranges
    resident = _rss_file_kib()
    pages.release([mapped])
    assert resident - _rss_file_kib() >= 24 * 1024
    assert torch.equal(mapped, weights)  # mapped again from the file


def test_release_never_touches_memory_outside_the_files_mapping(tmp_path):
    path = tmp_path / "small.pt"
    torch.save({"w": torch.ones(1024)}, path)
    mapped = torch.load(path, mmap=True, weights_only=True)  # noqa: F841  (keeps the mapping)
    own = torch.randn(4 * 2**20)
    expected = own.clone()
    mapped_pages.MappedPages(str(path)).release([own])
    assert torch.equal(own, expected)  # MADV_DONTNEED would have zeroed anonymous pages


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_gunicorn_serves_a_converted_tag_with_its_quick_gelu(monkeypatch, tmp_path):
    """The image's path: the tag converted at build time, served from the file with the tag's QuickGELU."""
    import numpy as np
    import requests

    from .support.gunicorn import GunicornProcess

    torch.manual_seed(0)
    checkpoint = tmp_path / "laion400m_e32.pt"
    torch.save(open_clip.create_model("ViT-B-32-quickgelu").state_dict(), checkpoint)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, cache_dir=None: str(checkpoint))
    converted = tmp_path / "ViT-B-32.safetensors"
    assert convert.main(["--model", "ViT-B-32", "laion400m_e32", str(converted)]) == 0

    server = GunicornProcess({"CLIP_MODEL": "ViT-B-32", "CLIP_PRETRAINED": str(converted), "CLIP_DEVICE": "cpu",
                              "CLIP_PRECISION": "fp32"}, tmp_path / "gunicorn.log")
    try:
        server.wait_healthy()
        assert requests.get(server.base + "/health/ready", timeout=30).status_code == 200
        response = requests.post(server.base + "/embed/text", json={"texts": TEXTS}, timeout=60)
    finally:
        server.stop()
    assert response.status_code == 200
    assert response.json()["pretrained"] == "laion400m_e32"  # as when the image served the tag itself
    reference = open_clip.create_model("ViT-B-32-quickgelu", pretrained=str(checkpoint)).eval()
    with torch.inference_mode():
        expected = reference.encode_text(open_clip.get_tokenizer("ViT-B-32")(TEXTS), normalize=True).numpy()
    assert np.abs(np.asarray(response.json()["embeddings"]) - expected).max() <= 1e-5


def test_prefetch_reads_a_weights_file_ahead_and_skips_a_tag(tmp_path):
    import threading

    from clip_service.ops.prefetch import prefetch

    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"\0" * (20 * 2**20))
    assert not prefetch("laion400m_e32") and not prefetch(str(tmp_path / "missing.pt"))
    assert prefetch(str(weights))
    for thread in [t for t in threading.enumerate() if t.name == "prefetch-weights"]:
        thread.join(timeout=10)
        assert not thread.is_alive()
