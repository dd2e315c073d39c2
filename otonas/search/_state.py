"""Save nested state (optimizer ``state_dict``s, RNG states, histories) without pickle:
tensors go to one safetensors file, everything else to JSON beside it."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .._errors import OtonasError

__all__ = ["save_state", "load_state", "atomic_write_text"]


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = path or "root"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _encode(v, tensors, f"{path}.{k}") for k, v in obj.items()}}
        return {"__items__": [[_encode(k, tensors, f"{path}.k{i}"), _encode(v, tensors, f"{path}.{i}")]
                              for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).replace("torch.", "")}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise OtonasError(f"cannot save a {type(obj).__name__} at {path or 'the top'} without pickle; "
                      "state must hold tensors, numbers, strings, lists, tuples and dicts")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__dict__"].items()}
        if "__items__" in obj:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__dtype__" in obj:
            return getattr(torch, obj["__dtype__"])
    return obj


def atomic_write_text(path: str, text: str) -> None:
    """Write then rename, so an interruption never leaves a half-written file."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_state(obj: Any, prefix: str) -> None:
    """Write ``prefix.json`` and ``prefix.safetensors`` (each atomically)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(obj, tensors, "")
    d = os.path.dirname(os.path.abspath(prefix))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".safetensors")
    os.close(fd)
    # safetensors refuses tensors that share memory; clone the aliases
    seen: dict[int, str] = {}
    for k, t in list(tensors.items()):
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen and ptr != -1:
            tensors[k] = t.clone()
        seen[ptr] = k
    save_file(tensors, tmp)
    os.replace(tmp, prefix + ".safetensors")
    atomic_write_text(prefix + ".json", json.dumps(tree))


def load_state(prefix: str) -> Any:
    try:
        with open(prefix + ".json") as f:
            tree = json.load(f)
        tensors = load_file(prefix + ".safetensors")
    except FileNotFoundError as e:
        raise OtonasError(f"checkpoint file {e.filename} is missing") from None
    except Exception as e:  # safetensors and json raise their own kinds on corrupt files
        raise OtonasError(f"checkpoint {prefix}.* is corrupt ({type(e).__name__}: {e}); "
                          "delete it and start again, or resume from another run") from None
    try:
        return _decode(tree, tensors)
    except KeyError as e:
        raise OtonasError(f"checkpoint {prefix}.* is corrupt: tensor {e} is missing") from None
