"""Import open_clip without the compiler stack, timm and the Hugging Face hub client until they are needed.

``import open_clip`` takes ~3 s on a 2 vCPU machine, and most of it is not
open_clip: torchvision's ``ops/roi_align.py`` imports ``torch._dynamo`` (the
``torch.compile`` front end, with sympy, torch.fx and torch.distributed behind
it) for one helper that only its ``roi_align`` calls; open_clip imports timm,
whose model modules import ``torch._dynamo`` again; and it imports
``huggingface_hub`` (~0.5 s with its HTTP stack) for downloads. None of them
is needed to build, load or run open_clip's own CLIP towers from a local
file. So, for the one ``import open_clip`` of the service process:

- torchvision's helper is bound to a stand-in that imports the real one on
  first call (the same answer, later);
- timm and huggingface_hub are hidden, so open_clip takes its own "not
  installed" branches. ``ensure_timm()`` and ``ensure_hub()`` undo that by
  re-running the open_clip module concerned once the package is importable;
  loading.py calls them before building a timm tower or downloading a tag.

The stand-ins are gone when the import returns: every package imports
normally afterwards. Anything unexpected falls back to a plain import.
Written by hand because no library trims another package's imports; the
saving is measured in bench/cold_start.py.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types

log = logging.getLogger(__name__)

_DYNAMO = "torch._dynamo"
_DYNAMO_UTILS = "torch._dynamo.utils"
# Hidden package -> the open_clip module that imports it inside ``try: ... except ImportError``.
_DEFERRED = {"timm": "open_clip.timm_model", "huggingface_hub": "open_clip.pretrained"}


def import_open_clip() -> types.ModuleType:
    """Import open_clip once, lean when nothing imported it (or what it hides) yet."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    import torch  # noqa: F401  (the stand-ins below hang under torch's package)

    stand_ins: dict[str, types.ModuleType | None] = {}
    if _DYNAMO not in sys.modules and "torchvision" not in sys.modules:
        stand_ins[_DYNAMO], stand_ins[_DYNAMO_UTILS] = _deferred_dynamo()
    for package in _DEFERRED:
        if package not in sys.modules:
            stand_ins[package] = None  # None in sys.modules makes ``import package`` raise ImportError
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module("open_clip")
    except Exception as exc:  # a release that needs what was hidden: import it the plain way
        log.warning("lean import of open_clip failed (%s); importing it in full", exc)
        _remove(stand_ins)
        for name in [m for m in sys.modules if m == "open_clip" or m.startswith("open_clip.")]:
            del sys.modules[name]
        return importlib.import_module("open_clip")
    finally:
        _remove(stand_ins)


def ensure_timm() -> None:
    """Give open_clip its timm back (for timm image towers); a no-op when it has it or timm is not installed."""
    _restore("timm", attribute="timm")


def ensure_hub() -> None:
    """Give open_clip its Hugging Face hub client back (for tag downloads); a no-op when it has it."""
    _restore("huggingface_hub", attribute="hf_hub_download")


def _restore(package: str, *, attribute: str) -> None:
    module = sys.modules.get(_DEFERRED[package])
    if module is None or getattr(module, attribute, None) is not None:
        return
    try:
        importlib.import_module(package)
    except ImportError:
        return
    # Re-running the module binds the package in its namespace, which its functions
    # and classes (also those imported elsewhere) read at call time.
    importlib.reload(module)


def _remove(stand_ins: dict) -> None:
    for name, module in stand_ins.items():
        if sys.modules.get(name, False) is module:
            del sys.modules[name]
    # Not getattr: torch's module __getattr__ would import the real _dynamo.
    torch_namespace = vars(sys.modules["torch"])
    if _DYNAMO in stand_ins and torch_namespace.get("_dynamo") is stand_ins[_DYNAMO]:
        del torch_namespace["_dynamo"]  # torch imports the real one on first access again


def _deferred_dynamo() -> tuple[types.ModuleType, types.ModuleType]:
    package = types.ModuleType(_DYNAMO, "clip-service stand-in while open_clip is imported")
    package.__path__ = []
    utils = types.ModuleType(_DYNAMO_UTILS, "clip-service stand-in while open_clip is imported")

    def is_compile_supported(device_type):
        """torch._dynamo.utils.is_compile_supported, imported on first call."""
        from torch._dynamo.utils import is_compile_supported as real

        return real(device_type)

    utils.is_compile_supported = is_compile_supported
    package.utils = utils
    return package, utils
