"""Import a package without the modules it imports but never needs here, then put everything back.

``import open_clip`` takes ~3 s on a 2 vCPU machine, and most of it is not
open_clip: torchvision's ``ops/roi_align.py`` imports ``torch._dynamo`` (the
``torch.compile`` front end, with sympy, torch.fx and torch.distributed behind
it) for one helper that only its ``roi_align`` calls; open_clip imports timm,
whose model modules import ``torch._dynamo`` again; and it imports
``huggingface_hub`` (~0.5 s with its HTTP stack) for downloads. None of them
is needed to build, load or run open_clip's own CLIP towers from a local
file. So, for the one ``import open_clip`` of the service process
(private_apis.py names the modules, as they are torch's and open_clip's
private layout):

- a ``deferred`` module is replaced by a stand-in whose functions import the
  real ones on first call (the same answer, later);
- a ``hidden`` package is made unimportable, so open_clip takes its own "not
  installed" branch. ``give_back`` undoes that by re-running the open_clip
  module concerned once the package is importable; loading.py asks for it
  before building a timm tower or downloading a tag.

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
from typing import Callable

log = logging.getLogger(__name__)


def import_lean(name: str, *, deferred: dict[str, tuple[str, ...]], hidden: tuple[str, ...]) -> types.ModuleType:
    """Import ``name`` once, lean when nothing imported it (or what it hides) yet.

    ``deferred`` maps a module to the functions its stand-in defers;
    ``hidden`` lists the packages made unimportable meanwhile.
    """
    if name in sys.modules:
        return sys.modules[name]
    stand_ins: dict[str, types.ModuleType | None] = {}
    for module, functions in deferred.items():
        importlib.import_module(module.partition(".")[0])  # the stand-ins hang under that package (torch)
        if module.rpartition(".")[0] not in sys.modules:
            stand_ins.update(_stand_ins(module, functions))
    for package in hidden:
        if package not in sys.modules:
            stand_ins[package] = None  # None in sys.modules makes ``import package`` raise ImportError
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module(name)
    except Exception as exc:  # a release that needs what was hidden: import it the plain way
        log.warning("lean import of %s failed (%s); importing it in full", name, exc)
        _remove(stand_ins)
        return import_in_full(name)
    finally:
        _remove(stand_ins)


def import_in_full(name: str) -> types.ModuleType:
    """Forget ``name`` and its submodules, and import it the plain way."""
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]
    return importlib.import_module(name)


def give_back(package: str, module: str, name: str) -> None:
    """Bind ``package`` again where ``module`` binds it as ``name``; a no-op when bound or not installed."""
    importer = sys.modules.get(module)
    if importer is None or getattr(importer, name, None) is not None:
        return
    try:
        importlib.import_module(package)
    except ImportError:
        return
    # Re-running the module binds the package in its namespace, which its functions
    # and classes (also those imported elsewhere) read at call time.
    importlib.reload(importer)


def _remove(stand_ins: dict) -> None:
    for name, module in stand_ins.items():
        if sys.modules.get(name, False) is module:
            del sys.modules[name]
    for name, module in stand_ins.items():
        parent, _, leaf = name.rpartition(".")
        # Not getattr: torch's module __getattr__ would import the real torch._dynamo.
        if module is not None and parent in sys.modules and vars(sys.modules[parent]).get(leaf) is module:
            delattr(sys.modules[parent], leaf)  # the parent imports the real one on first access again


def _stand_ins(module: str, functions: tuple[str, ...]) -> dict[str, types.ModuleType]:
    """A stand-in for ``module`` and its package, whose ``functions`` import the real ones on first call."""
    package_name, _, leaf = module.rpartition(".")
    package = types.ModuleType(package_name, "clip-service stand-in while open_clip is imported")
    package.__path__ = []
    stand_in = types.ModuleType(module, "clip-service stand-in while open_clip is imported")
    for function in functions:
        setattr(stand_in, function, _on_first_call(module, function))
    setattr(package, leaf, stand_in)
    return {package_name: package, module: stand_in}


def _on_first_call(module: str, function: str) -> Callable:
    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), function)(*args, **kwargs)

    call.__name__ = call.__qualname__ = function
    call.__doc__ = f"{module}.{function}, imported on first call."
    return call
