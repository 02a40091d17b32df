"""Import open_clip without the compiler stack and timm that its imports drag in but this service never runs.

``import open_clip`` takes ~3 s on a 2 vCPU machine, and half of it is not
open_clip: torchvision's ``ops/roi_align.py`` imports ``torch._dynamo`` (the
``torch.compile`` front end, with sympy, torch.fx and torch.distributed behind
it) for one helper that only its ``roi_align`` calls, and open_clip imports
timm eagerly, whose model modules import ``torch._dynamo`` again. Neither is
needed to build, load or run open_clip's own CLIP towers. So, for the one
``import open_clip`` of the service process:

- that helper is bound to a stand-in that imports the real one on first call
  (the same answer, later), so ``torch._dynamo`` is not imported at start-up;
- timm is hidden, so open_clip takes its own "timm is not installed" branch.
  ``ensure_timm()`` undoes that for the architectures that do need timm
  (``loading.py`` calls it before building one).

Both are undone when the import returns: ``torch._dynamo`` and timm import
normally afterwards. Anything unexpected falls back to a plain import. Written
by hand because no library trims another package's imports; measured in
``bench/cold_start.py``.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types

log = logging.getLogger(__name__)

_DYNAMO = "torch._dynamo"
_DYNAMO_UTILS = "torch._dynamo.utils"


def import_open_clip() -> types.ModuleType:
    """Import open_clip once, lean when nothing imported it (or torchvision, timm, dynamo) yet."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    import torch  # noqa: F401  (the stand-ins below hang under torch's package)

    stand_ins = {}
    if _DYNAMO not in sys.modules and "torchvision" not in sys.modules:
        stand_ins[_DYNAMO], stand_ins[_DYNAMO_UTILS] = _deferred_dynamo()
    if "timm" not in sys.modules:
        stand_ins["timm"] = None  # None in sys.modules makes ``import timm`` raise ImportError
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
    """Give open_clip its timm back if it was imported without (a no-op when timm is not installed)."""
    timm_model = sys.modules.get("open_clip.timm_model")
    if timm_model is not None and getattr(timm_model, "timm", None) is None:
        try:
            importlib.import_module("timm")
        except ImportError:
            return
        # Re-running the module binds timm in its namespace, which its classes read at call time.
        importlib.reload(timm_model)


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
