"""Import torchvision even where its native library does not fit the installed torch.

The torchvision wheels on PyPI are CUDA builds; next to the CPU build of torch their
compiled ops fail to load, and ``import torchvision`` then raises
``RuntimeError: operator torchvision::nms does not exist`` while registering fake
kernels for ``nms``. The model zoo and the transforms are pure Python and do not need
those ops, so when (and only when) the normal import fails that way we define the two
missing op schemas and import again. Detection ops (``nms``) stay unusable; nothing in
otonas needs them.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

_schema_lib = None  # keeps the torch.library.Library alive: dropping it unregisters the schemas


def import_torchvision() -> ModuleType:
    """Return the ``torchvision`` module, working around a CPU-torch / CUDA-torchvision mismatch."""
    global _schema_lib
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    if _schema_lib is None:
        _schema_lib = torch.library.Library("torchvision", "DEF")
        _schema_lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _schema_lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return importlib.import_module("torchvision")


def prepare_torchvision() -> None:
    """Import torchvision through :func:`import_torchvision` if it is installed, so that a later
    ``import torchvision`` anywhere (a user's module, transformers' image utilities) finds it
    loaded instead of failing on the op mismatch. Call before importing code that is not ours."""
    if "torchvision" in sys.modules:
        return
    try:
        import_torchvision()
    except Exception:  # not installed, or broken another way: whoever imports it next gets torch's error
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
