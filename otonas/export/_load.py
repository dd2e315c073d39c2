"""Loading an export: the ``load`` function written into every ``model.py``, and
:func:`load`, which imports that ``model.py`` and calls it. Weights are read with
safetensors only; nothing here deserializes Python objects."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

from torch import nn

from ._graph import ExportError

__all__ = ["load", "LOADER"]

_counter = itertools.count()

# Written at the end of model.py, with __CLASS__ replaced by the class name. It reads the
# safetensors header itself first so that every problem names the tensor it concerns.
LOADER = '''
_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "C64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
          "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def load(path=None, *, device="cpu", check=True):
    """Build __CLASS__ with the weights of a safetensors file (default: model.safetensors next
    to this file), in eval mode. A truncated or damaged file, or one that does not fit this
    network, raises ValueError naming the tensor; ``check`` also compares each tensor's CRC-32."""
    from safetensors.torch import load_file

    path = path or os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.safetensors")
    with torch.device("meta"):
        model = __CLASS__()
    shapes = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    header, crc = _read_header(path)
    problems = [f"missing tensor '{k}'" for k in shapes if k not in header]
    problems += [f"unexpected tensor '{k}'" for k in header if k not in shapes]
    problems += [f"tensor '{k}' has shape {tuple(h['shape'])}, model.py expects {shapes[k]}"
                 for k, h in header.items() if k in shapes and tuple(h["shape"]) != shapes[k]]
    if problems:
        raise ValueError(f"{path} does not fit model.py: " + "; ".join(problems))
    if check and crc:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            start = 8 + int.from_bytes(data[:8], "little")
            for k, h in header.items():
                a, b = h["data_offsets"]
                if k in crc and zlib.crc32(data[start + a:start + b]) != crc[k]:
                    raise ValueError(f"{path} is damaged: tensor '{k}' does not match its checksum")
    try:
        state = load_file(path, device=str(device))
    except Exception as e:
        raise ValueError(f"{path} could not be read: {e}") from e
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _read_header(path):
    """The tensors a safetensors file lists, checked against the file's size, and their CRC-32s."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or 8 + n > size:
            raise ValueError(f"{path} is truncated or not safetensors: its header is incomplete")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise ValueError(f"{path} is damaged: its header is not valid JSON") from None
    meta = header.pop("__metadata__", None) or {}
    for k, h in header.items():
        try:
            a, b = h["data_offsets"]
            nbytes = _BYTES[h["dtype"]] * math.prod(h["shape"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path} is damaged: the header of tensor '{k}' is malformed") from None
        if b - a != nbytes:
            raise ValueError(f"{path} is damaged: tensor '{k}' ({h['dtype']} {h['shape']}) "
                             f"should take {nbytes} bytes, the header gives {b - a}")
        if 8 + n + b > size:
            raise ValueError(f"{path} is truncated: tensor '{k}' needs {8 + n + b} bytes, it has {size}")
    return header, json.loads(meta.get("crc32", "{}"))
'''


def _import(model_py: Path) -> ModuleType:
    name = f"otonas_export_{next(_counter)}_{abs(hash(str(model_py)))}"
    spec = importlib.util.spec_from_file_location(name, model_py)
    if spec is None or spec.loader is None:
        raise ExportError(f"cannot import {model_py}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ExportError(f"{model_py} does not import: {type(e).__name__}: {e}") from e
    return module


def load(path: str | Path, *, device: str = "cpu", check: bool = True) -> nn.Module:
    """Build the network an export describes and load its weights (in eval mode).

    ``path`` is the export directory (with ``model.py`` and ``model.safetensors``) or the
    ``model.safetensors`` file itself. ``model.py`` is imported under a unique module name and
    its own ``load`` is called, so what runs here is exactly what runs without otonas.
    Problems with the weights raise :class:`ExportError` naming the tensor.
    """
    path = Path(path)
    weights = path if path.is_file() else path / "model.safetensors"
    model_py = weights.parent / "model.py"
    if not model_py.is_file():
        raise ExportError(f"no model.py in {weights.parent}: export the network there with otonas.export.export")
    if not weights.is_file():
        raise ExportError(f"no weights at {weights}: model.safetensors is missing")
    module = _import(model_py)
    if not callable(getattr(module, "load", None)):
        raise ExportError(f"{model_py} has no load() function; was it written by otonas.export?")
    try:
        return module.load(str(weights), device=device, check=check)
    except (ValueError, OSError) as e:
        raise ExportError(str(e)) from e
