"""Private symbols of torch and open_clip: all there in the pinned releases, and each one's fallback taken without it.

A release that renamed or reshaped a symbol is simulated by putting a
stand-in in its place (a call-through function that fails the check, another
value, or nothing) and importing private_apis.py again; the real symbol is
put back at once, so only private_apis's view of the release differs and
torch and open_clip themselves keep working.
"""

from __future__ import annotations

import copy
import importlib
import subprocess
import sys
import textwrap
import types

import numpy as np
import open_clip
import pytest
import torch
from torch import nn

from clip_service.model import loading, prepacked, private_apis, text_encoding, tokenizer
from clip_service.model.embedder import ClipEmbedder
from clip_service.model.errors import ModelLoadError

from .helpers import ROOT, TINY_MODEL, reference_text_vectors

TEXTS = ["a photo of a cat", "", "two dogs playing with a red ball in a park at sunset", "🚀"] * 2

# Every symbol private_apis.py looks up, as it names them; a release that drops one fails here.
SYMBOLS = ["reorder_linear_weight", "linear_pointwise", "is_avx512_bf16_supported", "is_amx_tile_supported",
           "register_parameter", "TorchFunctionMode", "parse_model_name", "convert_state_dict",
           "convert_to_custom_text_state_dict", "resize_pos_embed", "resize_text_pos_embed", "PreprocessCfg",
           "merge_preprocess_dict", "image_transform_v2", "_factory_download", "ResidualAttentionBlock",
           "QuickGELU", "text_global_pool", "_shared", "DEFAULT_CONTEXT_LENGTH", "get_clean_fn", "MaybeConvertMode"]


@pytest.mark.parametrize("name", SYMBOLS)
def test_every_private_symbol_is_there_in_the_pinned_releases(name):
    assert getattr(private_apis, name) is not None, private_apis.MISSING


def test_nothing_falls_back_in_the_pinned_releases():
    assert private_apis.MISSING == {}
    assert private_apis.FAST_PATH and private_apis.SIMPLE_TOKENIZER_INTERNALS


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_a_fresh_import_warns_of_nothing_and_the_deferred_helper_exists():
    """The one symbol checked only here: checking it at import would import the compiler stack it defers."""
    result = _python("""
        import inspect
        import clip_service.model
        from torch._dynamo.utils import is_compile_supported
        assert list(inspect.signature(is_compile_supported).parameters) == ["device_type"]
        print("ok")
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == "" and result.stdout.strip() == "ok"


CHANGED, DELETED = object(), object()


@pytest.fixture
def release_without(monkeypatch):
    """``release_without((owner, name[, value]), ...)``: private_apis as imported with each ``owner.name`` reshaped.

    Reshaped: a call-through function in its place (the default), ``value``,
    or no such attribute (``DELETED``). The real symbols are back as soon as
    private_apis has been imported again, so open_clip and torch themselves
    keep working; private_apis's view of them comes back after the test.
    Returns ``private_apis.MISSING``.
    """
    def change(*changes) -> dict[str, str]:
        for owner, name, value in [(*change, CHANGED)[:3] for change in changes]:
            real = getattr(owner, name)
            if value is DELETED:
                monkeypatch.delattr(owner, name)
            else:
                monkeypatch.setattr(owner, name, (lambda *args, **kwargs: real(*args, **kwargs))
                                    if value is CHANGED else value)
        importlib.reload(private_apis)
        monkeypatch.undo()
        return private_apis.MISSING

    yield change
    importlib.reload(private_apis)


def _text_gap(embedder: ClipEmbedder, reference_model) -> float:
    return float(np.abs(embedder.embed_texts(TEXTS) - reference_text_vectors(reference_model, TEXTS)).max())


# --- the fast path ------------------------------------------------------------------------------

@pytest.mark.parametrize("owner, name", [
    (nn.Module, "register_parameter"),
    (open_clip.factory, "parse_model_name"),
    (open_clip.convert, "convert_state_dict"),
    (open_clip.model, "convert_to_custom_text_state_dict"),
    (open_clip.model, "resize_pos_embed"),
    (open_clip.model, "resize_text_pos_embed"),
    (open_clip.transform, "PreprocessCfg"),
    (open_clip.transform, "merge_preprocess_dict"),
    (open_clip.transform, "image_transform_v2"),
], ids=lambda value: value if isinstance(value, str) else "")
def test_without_a_symbol_of_the_fast_path_open_clip_loads_the_model(release_without, tiny_checkpoint, owner, name):
    (symbol, fallback), = release_without((owner, name)).items()
    assert symbol.endswith(f"{owner.__name__}.{name}") and "through open_clip" in fallback
    assert not private_apis.FAST_PATH and not loading._fast_path_covers(TINY_MODEL, str(tiny_checkpoint))
    loaded = loading.load_model(TINY_MODEL, str(tiny_checkpoint), "cpu", prepack=False)
    assert set(loaded.seconds) == {"open_clip"}
    reference = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=str(tiny_checkpoint))[0].eval()
    tokens = open_clip.get_tokenizer(TINY_MODEL)(TEXTS)
    with torch.inference_mode():
        ours, theirs = loaded.model.encode_text(tokens, normalize=True), reference.encode_text(tokens, normalize=True)
    assert torch.equal(ours, theirs)


def test_without_open_clips_text_cleaning_a_hugging_face_tokenizer_refuses_in_one_line(release_without, tmp_path):
    """SigLIP's tokenizer cleans text as open_clip's HFTokenizer does; without that function it cannot."""
    from .support.hub_tokenizers import write_hub_tokenizer

    (symbol, fallback), = release_without((open_clip.tokenizer, "get_clean_fn")).items()
    assert symbol.endswith("tokenizer.get_clean_fn") and "refuses to start" in fallback
    with pytest.raises(ModelLoadError, match="text cleaning"):
        tokenizer.for_model("ViT-B-16-SigLIP", directory=str(write_hub_tokenizer(tmp_path, "t5")))


def test_without_torch_function_mode_the_initialisers_run_on_meta(tiny_checkpoint):
    """Slower (torch imports its compiler stack for them), but nothing is drawn and the load is the same.

    Only private_apis's view of it is taken away, in a fresh process: torch subclasses it in modules it
    imports later, so a stand-in in torch itself would break torch.
    """
    result = _python(f"""
        import sys
        import torch
        from clip_service.model import loading, private_apis
        private_apis.open_clip.add_model_config("tests/model_configs/{TINY_MODEL}.json")
        expected = loading.load_model("{TINY_MODEL}", {str(tiny_checkpoint)!r}, "cpu", prepack=False).model.state_dict()
        assert "torch._dynamo" not in sys.modules
        private_apis.TorchFunctionMode = None
        loaded = loading.load_model("{TINY_MODEL}", {str(tiny_checkpoint)!r}, "cpu", prepack=False)
        assert "build" in loaded.seconds, "not the fast path"
        assert "torch._dynamo" in sys.modules, "the initialisers did not run"
        state = loaded.model.state_dict()
        assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
        print("ok")
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


def test_without_factorys_download_a_tag_comes_through_open_clips_exported_one(release_without, monkeypatch,
                                                                               tiny_checkpoint):
    missing = release_without((open_clip.factory, "download_pretrained"))
    assert list(missing) == ["open_clip.factory.download_pretrained"]
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY_MODEL, {"some_tag": {"hf_hub": "example/tiny/"}})
    downloads = []
    monkeypatch.setattr(open_clip, "download_pretrained",
                        lambda cfg, cache_dir=None: downloads.append(cfg) or str(tiny_checkpoint))
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, cache_dir=None: pytest.fail("used"))
    loaded = loading.load_model(TINY_MODEL, "some_tag", "cpu", prepack=False)
    assert "build" in loaded.seconds and downloads == [{"hf_hub": "example/tiny/"}]


# --- prepacking ---------------------------------------------------------------------------------

needs_onednn = pytest.mark.skipif(not prepacked.available(), reason="this torch build has no oneDNN")


def test_without_onednns_ops_nothing_is_prepacked(release_without, tiny_checkpoint, reference_model):
    missing = release_without((torch.ops, "mkldnn", types.SimpleNamespace()))
    assert set(missing) == {"torch.ops.mkldnn._reorder_linear_weight", "torch.ops.mkldnn._linear_pointwise.default"}
    assert not prepacked.available() and not prepacked.bf16_native()
    embedder = ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu", precision="auto")
    assert embedder.prepacked_blocks == 0 and embedder.precision == "fp32"
    assert type(embedder.model.visual.conv1) is nn.Conv2d
    assert _text_gap(embedder, reference_model) <= 1e-5


@needs_onednn
def test_without_open_clips_block_class_no_block_is_prepacked(release_without, tiny_checkpoint, reference_model):
    release_without((open_clip.transformer, "ResidualAttentionBlock"))
    embedder = ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu", precision="fp32")
    assert embedder.prepacked_blocks == 0
    assert type(embedder.model.visual.conv1) is prepacked.PrepackedPatchEmbedding  # not a block: still swapped
    assert _text_gap(embedder, reference_model) <= 1e-5


@needs_onednn
def test_without_quick_gelu_it_runs_as_its_own_module(release_without, tiny_checkpoint):
    release_without((open_clip.transformer, "QuickGELU"))
    model = open_clip.create_model(TINY_MODEL, pretrained=str(tiny_checkpoint), force_quick_gelu=True).eval()
    original = copy.deepcopy(model)
    assert prepacked.prepack(model) == 2
    mlp = model.transformer.resblocks[0].mlp
    assert mlp.c_fc.activation == "none" and mlp.c_fc.fused is None and type(mlp.gelu).__name__ == "QuickGELU"
    tokens = open_clip.get_tokenizer(TINY_MODEL)(TEXTS)
    with torch.inference_mode():
        gap = (model.encode_text(tokens, normalize=True) - original.encode_text(tokens, normalize=True)).abs().max()
    assert gap <= 1e-5


@pytest.mark.parametrize("present", ["_is_amx_tile_supported", None])
def test_without_a_bf16_detector_the_other_decides(release_without, present):
    gone = [name for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported") if name != present]
    assert len(release_without(*[(torch.cpu, name, DELETED) for name in gone])) == len(gone)
    expected = prepacked.available() and present is not None and getattr(torch.cpu, present)()
    assert prepacked.bf16_native() == expected


# --- text encoding and the tokenizer ------------------------------------------------------------

def test_without_open_clips_text_pooling_texts_run_untrimmed(release_without, tiny_checkpoint, reference_model):
    release_without((open_clip.transformer, "text_global_pool"))
    embedder = ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu", precision="fp32")
    assert not text_encoding.supports_text_trimming(embedder.model)
    assert not text_encoding.supports_text_packing(embedder.model)
    assert _text_gap(embedder, reference_model) <= 1e-5


@pytest.mark.parametrize("name, value", [("_tokenizer", None), ("DEFAULT_CONTEXT_LENGTH", "77")])
def test_without_the_shared_tokenizer_open_clip_builds_one(release_without, name, value):
    shared = open_clip.tokenizer._tokenizer
    assert list(release_without((open_clip.tokenizer, name, value))) == [f"open_clip.tokenizer.{name}"]
    ours = tokenizer.for_model(TINY_MODEL)
    assert isinstance(ours, tokenizer.BoundedTokenizer) and ours.inner is not shared
    assert torch.equal(ours(TEXTS), open_clip.get_tokenizer(TINY_MODEL)(TEXTS))


def test_without_the_tokenizers_internals_the_service_refuses_to_start_in_one_line(release_without, monkeypatch,
                                                                                   tiny_checkpoint, capsys):
    from clip_service.startup import EXIT_MODEL_LOAD, app_or_exit

    missing = release_without((open_clip.tokenizer._tokenizer, "byte_encoder", DELETED))
    assert list(missing) == ["open_clip.tokenizer.SimpleTokenizer.byte_encoder"]
    assert not private_apis.SIMPLE_TOKENIZER_INTERNALS
    with pytest.raises(ModelLoadError, match="private_apis.py"):
        ClipEmbedder.load(TINY_MODEL, str(tiny_checkpoint), "cpu")
    monkeypatch.setenv("CLIP_MODEL", TINY_MODEL)
    monkeypatch.setenv("CLIP_PRETRAINED", str(tiny_checkpoint))
    monkeypatch.setenv("CLIP_DEVICE", "cpu")
    with pytest.raises(SystemExit) as exit_:
        app_or_exit()
    assert exit_.value.code == EXIT_MODEL_LOAD
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clip-service cannot start: ") and "SimpleTokenizer" in lines[0]


# --- the lean import ----------------------------------------------------------------------------

@pytest.mark.parametrize("module, name", [("open_clip.timm_model", "timm"),
                                          ("open_clip.pretrained", "hf_hub_download")])
def test_without_a_hidden_packages_name_open_clip_is_imported_in_full(module, name):
    """A fresh process whose open_clip binds the hidden package under another name: open_clip is imported again."""
    result = _python(f"""
        import os, sys, types
        import clip_service
        # The layer's package without its __init__, which would import private_apis before the change below.
        package = types.ModuleType("clip_service.model")
        package.__path__ = [os.path.join(os.path.dirname(clip_service.__file__), "model")]
        sys.modules["clip_service.model"] = package
        from clip_service.model import lean_import

        real = lean_import.import_lean
        def import_lean(name, **kwargs):
            module = real(name, **kwargs)
            delattr(sys.modules["{module}"], "{name}")  # as a release that renamed it
            return module
        lean_import.import_lean = import_lean
        from clip_service.model import private_apis

        assert list(private_apis.MISSING) == ["open_clip.{module.partition('.')[2]}.{name}"], private_apis.MISSING
        assert private_apis.open_clip is sys.modules["open_clip"]
        assert getattr(sys.modules["{module}"], "{name}") is not None  # bound, as in a plain import
        print("ok")
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok" and "imported again, in full" in result.stderr
