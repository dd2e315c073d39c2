"""Build in place: slice the user's own modules and fix their size attributes, so the smaller
model keeps its class and methods (``generate()``, its KV cache, ``save_pretrained`` of the
weights). The removal decision is the graph build's (the same :class:`Plan`); the
result is checked against the graph build on the example inputs before it is committed.

What one module type does with sliced tensors is a :class:`Resizer`, registered with
:func:`register_resizer`. Attention modules hold no parameters of their own but read head
counts at forward time; :func:`_attention_attrs` derives them from their projections' keep
masks, by the attribute names transformers uses."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from torch.export.graph_signature import InputKind
from torch.utils import _pytree as pytree

from ..errors import BuildError
from ..analysis import Plan, SearchSpace

__all__ = ["Resizer", "register_resizer", "build_inplace"]

RTOL = 1e-4


@dataclass(frozen=True)
class Sliced:
    """One tensor of a module after slicing: its old shape and the kept positions per dim."""

    old: tuple[int, ...]
    masks: tuple[np.ndarray, ...]

    @property
    def new(self) -> tuple[int, ...]:
        return tuple(int(m.sum()) for m in self.masks)


class Resizer:
    """How one module type's size attributes follow its sliced parameters and buffers.

    The in-place builder calls :meth:`attributes` once for every module of this type whose own
    tensors it sliced (``tensors``: own tensor name -> :class:`Sliced`; the module still holds
    the old tensors) and sets what it returns. Raise :class:`BuildError` when the module cannot
    take the new sizes. ``weight_dims`` (out, in) of the ``weight`` lets attention modules read
    their projections' kept output positions."""

    weight_dims: tuple[int, int] | None = None

    def attributes(self, module: nn.Module, tensors: dict[str, Sliced]) -> dict[str, Any]:
        raise NotImplementedError


_RESIZERS: dict[type, Resizer] = {}
_C = TypeVar("_C", bound=type)


def register_resizer(*types: type) -> Callable[[_C], _C]:
    """Class decorator: an instance of the decorated :class:`Resizer` serves ``types`` (and
    their subclasses). A type registered twice warns; the later resizer serves it."""

    def deco(cls: _C) -> _C:
        for t in types:
            if t in _RESIZERS:
                warnings.warn(f"otonas: resizer for {t.__name__} replaced by {cls.__name__}", stacklevel=2)
            _RESIZERS[t] = cls()
        return cls

    return deco


def resizer_for(module: nn.Module) -> Resizer | None:
    for t in type(module).__mro__:
        if t in _RESIZERS:
            return _RESIZERS[t]
    # transformers' Conv1D (GPT-2): a transposed Linear, known by its two size attributes
    if isinstance(getattr(module, "nf", None), int) and isinstance(getattr(module, "nx", None), int):
        return _CONV1D
    # transformers' experts of a MoE layer (Mixtral, Qwen2-MoE, …): 3-D [E, 2I, H] / [E, H, I] parameters
    down = getattr(module, "down_proj", None)
    if isinstance(down, nn.Parameter) and down.dim() == 3 and isinstance(getattr(module, "intermediate_dim", None), int):
        return _EXPERTS
    return None


def _weight(module: nn.Module, tensors: dict[str, Sliced]) -> tuple[int, ...]:
    """The new shape of a module's ``weight`` (its present one where it was not sliced)."""
    s = tensors.get("weight")
    if s is not None:
        return s.new
    w = getattr(module, "weight")
    assert isinstance(w, torch.Tensor)
    return tuple(w.shape)


@register_resizer(nn.Linear)
class LinearResizer(Resizer):
    weight_dims = (0, 1)

    def attributes(self, module: nn.Module, tensors: dict[str, Sliced]) -> dict[str, Any]:
        w = _weight(module, tensors)
        return {"out_features": w[0], "in_features": w[1]}


class Conv1DResizer(Resizer):
    weight_dims = (1, 0)

    def attributes(self, module: nn.Module, tensors: dict[str, Sliced]) -> dict[str, Any]:
        w = _weight(module, tensors)
        return {"nx": w[0], "nf": w[1]}


_CONV1D = Conv1DResizer()


class ExpertsResizer(Resizer):
    """The stacked experts of a transformers MoE layer: every expert keeps the same channels
    (``down_proj [E, H, I]`` loses positions of I), so ``intermediate_dim`` follows it."""

    def attributes(self, module: nn.Module, tensors: dict[str, Sliced]) -> dict[str, Any]:
        down = tensors.get("down_proj")
        if down is None:
            return {}
        if down.new[0] != down.old[0] or down.new[1] != down.old[1]:
            raise BuildError(f"the experts module ({type(module).__name__}) lost whole experts or hidden channels; "
                             "only its intermediate channels can be removed in place")
        return {"intermediate_dim": down.new[2]}


_EXPERTS = ExpertsResizer()


@register_resizer(nn.Bilinear)
class BilinearResizer(Resizer):
    def attributes(self, module: nn.Module, tensors: dict[str, Sliced]) -> dict[str, Any]:
        w = _weight(module, tensors)
        return {"out_features": w[0], "in1_features": w[1], "in2_features": w[2]}


@register_resizer(nn.modules.conv._ConvNd)
class ConvResizer(Resizer):
    """Conv and ConvTranspose, grouped and depthwise. The analysis removes a grouped conv's
    channels whole groups at a time (each output group with its input group), so the group
    count falls with the channels of the weight's first dim, as the graph build rescales it."""

    weight_dims = (0, 1)

    def attributes(self, module: nn.Module, tensors: dict[str, Sliced]) -> dict[str, Any]:
        conv: Any = module
        s = tensors.get("weight")
        w = s.new if s is not None else tuple(conv.weight.shape)
        old = s.old if s is not None else w
        groups = int(conv.groups)
        if groups > 1 and old[0] != w[0]:
            groups = groups * w[0] // old[0]
        if groups > 1 and int(conv.groups) * w[0] % old[0]:
            raise BuildError(f"{type(module).__name__} with groups={conv.groups}: {w[0]} of {old[0]} channels left, "
                             "which are not whole groups")
        if conv.transposed:
            in_c, out_c = w[0], w[1] * groups
        else:
            out_c, in_c = w[0], w[1] * groups
        return {"in_channels": in_c, "out_channels": out_c, "groups": groups}


@register_resizer(nn.modules.batchnorm._NormBase)
class BatchNormResizer(Resizer):
    def attributes(self, module: nn.Module, tensors: dict[str, Sliced]) -> dict[str, Any]:
        s = next(iter(v.new for k, v in tensors.items() if k in ("weight", "bias", "running_mean", "running_var")))
        return {"num_features": s[0]}


@register_resizer(nn.GroupNorm)
class GroupNormResizer(Resizer):
    """The analysis removes a GroupNorm's channels whole groups at a time: the group count falls
    with them, as the graph build rescales it."""

    def attributes(self, module: nn.Module, tensors: dict[str, Sliced]) -> dict[str, Any]:
        gn: Any = module
        s = next(iter(tensors.values()))
        c, old = s.new[0], s.old[0]
        if (gn.num_groups * c) % old:
            raise BuildError(f"GroupNorm with {gn.num_groups} groups: {c} of {old} channels left, which are not "
                             "whole groups")
        return {"num_channels": c, "num_groups": gn.num_groups * c // old}


@register_resizer(nn.LayerNorm, nn.RMSNorm)
class NormalizedShapeResizer(Resizer):
    def attributes(self, module: nn.Module, tensors: dict[str, Sliced]) -> dict[str, Any]:
        return {"normalized_shape": next(iter(tensors.values())).new}


@register_resizer(nn.Embedding, nn.EmbeddingBag)
class EmbeddingResizer(Resizer):
    def attributes(self, module: nn.Module, tensors: dict[str, Sliced]) -> dict[str, Any]:
        n, d = tensors["weight"].new
        pad = getattr(module, "padding_idx", None)
        out: dict[str, Any] = {"num_embeddings": n, "embedding_dim": d}
        if pad is not None:
            keep = tensors["weight"].masks[0]
            if not keep[pad]:
                raise BuildError(f"{type(module).__name__}: its padding_idx row {pad} was removed")
            out["padding_idx"] = int(keep[:pad].sum())
        return out


@register_resizer(nn.PReLU)
class PReLUResizer(Resizer):
    def attributes(self, module: nn.Module, tensors: dict[str, Sliced]) -> dict[str, Any]:
        return {"num_parameters": tensors["weight"].new[0]}


@register_resizer(nn.MultiheadAttention)
class MultiheadAttentionResizer(Resizer):
    def attributes(self, module: nn.Module, tensors: dict[str, Sliced]) -> dict[str, Any]:
        raise BuildError("torch.nn.MultiheadAttention requires num_heads * head_dim == embed_dim, so its heads "
                         "cannot be removed in place; build the graph (otonas.build(space)) or export it")


def _unknown_size_attrs(module: nn.Module, tensors: dict[str, Sliced]) -> list[str]:
    """Integer attributes of a module otonas has no resizer for that equal a size its tensors
    lost: probably sizes its forward reads."""
    lost = {o for s in tensors.values() for o, n in zip(s.old, s.new) if o != n}
    out = []
    for k, v in vars(module).items():
        if k.startswith("_") or isinstance(v, bool):
            continue
        vals = v if isinstance(v, (tuple, list)) else (v,)
        if any(isinstance(x, int) and not isinstance(x, bool) and x in lost for x in vals):
            out.append(k)
    return out


# --- attention -------------------------------------------------------------------------------
_HEADS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
_HEAD_DIM = ("head_dim", "attention_head_size", "head_size")
_Q = ("q_proj", "query", "q", "q_lin", "wq", "Wq")
_K = ("k_proj", "key", "k", "k_lin", "wk", "Wk")
_QKV = ("c_attn", "qkv_proj", "qkv", "query_key_value", "Wqkv", "in_proj")
_MLP = ("intermediate_size", "ffn_dim", "inner_dim")
_MLP_IN = ("up_proj", "gate_proj", "fc1", "c_fc", "w1", "wi", "dense_h_to_4h", "lin1")


def _first_attr(module: nn.Module, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if isinstance(getattr(module, n, None), int)
                 and not isinstance(getattr(module, n), bool)), None)


def _out_mask(child: nn.Module, sliced: dict[str, Sliced]) -> np.ndarray | None:
    """Kept output positions of a projection (None: not sliced along its output)."""
    r = resizer_for(child)
    s = sliced.get("weight")
    if r is None or r.weight_dims is None or s is None:
        return None
    return s.masks[r.weight_dims[0]]


def _heads_kept(mask: np.ndarray, heads: int, where: str) -> np.ndarray:
    """Per head: kept or not; a head that lost only some of its positions is an error."""
    per = mask.reshape(heads, -1)
    kept = np.asarray(per.all(axis=1), dtype=bool)
    if (per.any(axis=1) & ~kept).any():
        raise BuildError(f"{where}: channels inside attention heads were removed (not whole heads); its head_dim "
                         "cannot change in place")
    return kept


def _attention_attrs(path: str, module: nn.Module, children: dict[str, dict[str, Sliced]],
                     counts: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """Head counts of an attention module whose projections were sliced, by transformers' names.

    The old counts come from the projections' sizes and the head size (``head_dim``, or the
    module's own head count): a module may hold only some of the counts (transformers' Llama
    keeps ``head_dim`` and ``num_key_value_groups`` and reads the rest from its config)."""
    h_name = _first_attr(module, _HEADS)
    kv_name = _first_attr(module, _KV_HEADS)
    d_name = _first_attr(module, _HEAD_DIM)
    if h_name is None and d_name is None:
        return {}
    where = f"attention {_name(path, module)}"
    q = next((n for n in _Q if n in children and isinstance(getattr(module, n, None), nn.Module)), None)
    packed = next((n for n in _QKV if n in children and isinstance(getattr(module, n, None), nn.Module)), None)
    out: dict[str, Any] = {}
    if q is not None:
        qm = _out_mask(getattr(module, q), children[q])
        if qm is None:
            return {}
        head_dim = int(getattr(module, d_name)) if d_name else len(qm) // int(getattr(module, h_name or ""))
        heads = len(qm) // head_dim
        if len(qm) != heads * head_dim or (h_name and getattr(module, h_name) != heads):
            raise BuildError(f"{where}: {q} has {len(qm)} outputs, which are not "
                             f"{h_name or 'heads'} x head_dim={head_dim}")
        q_kept = _heads_kept(qm, heads, where)
        k = next((n for n in _K if isinstance(getattr(module, n, None), nn.Module)), None)
        km = None
        if k is not None:
            km = _out_mask(getattr(module, k), children[k]) if k in children else None
            if km is None:  # k not sliced along its outputs: every key/value head kept
                w = getattr(getattr(module, k), "weight", None)
                r = resizer_for(getattr(module, k))
                n_out = w.shape[r.weight_dims[0]] if isinstance(w, torch.Tensor) and r and r.weight_dims else len(qm)
                km = np.ones(n_out, dtype=bool)
        kv_heads = len(km) // head_dim if km is not None else heads
        kv_kept = _heads_kept(km, kv_heads, where) if km is not None else np.ones(heads, dtype=bool)
        if heads % kv_heads:
            raise BuildError(f"{where}: {heads} query heads do not divide into {kv_heads} key/value heads")
        per_group = q_kept.reshape(kv_heads, heads // kv_heads).sum(axis=1)
        if (per_group[~kv_kept] > 0).any():
            raise BuildError(f"{where}: a key/value head was removed but some of its query heads were kept")
        if len(set(per_group[kv_kept].tolist())) != 1:
            raise BuildError(f"{where}: query heads were removed unevenly across its {kv_heads} key/value groups "
                             f"(kept per group: {per_group.tolist()}); repeat_kv needs the same number in every "
                             "group. Zero query heads by whole groups or evenly, or build the graph (otonas.build)")
        h_new, kv_new = int(q_kept.sum()), int(kv_kept.sum())
        if kv_name:
            out[kv_name] = kv_new
        if _first_attr(module, ("num_key_value_groups",)):
            out["num_key_value_groups"] = h_new // kv_new
    elif packed is not None:
        pm = _out_mask(getattr(module, packed), children[packed])
        if pm is None:
            return {}
        head_dim = int(getattr(module, d_name)) if d_name else len(pm) // (3 * int(getattr(module, h_name or "")))
        heads = len(pm) // (3 * head_dim)
        if kv_name and getattr(module, kv_name) != heads or len(pm) != 3 * heads * head_dim:
            raise BuildError(f"{where}: otonas knows only packed multi-head attention in {packed} (q, k and v of "
                             "equal size)")
        kept3 = [_heads_kept(p, heads, where) for p in pm.reshape(3, heads * head_dim)]
        if not (np.array_equal(kept3[0], kept3[1]) and np.array_equal(kept3[0], kept3[2])):
            raise BuildError(f"{where}: {packed} lost different heads of q, k and v")
        h_new = kv_new = int(kept3[0].sum())
        if kv_name:
            out[kv_name] = h_new
    else:
        return {}
    if counts is not None:
        counts[path] = (h_new, kv_new)  # the config's head counts, where every layer agrees
    if h_name:
        out[h_name] = h_new
    for name in ("all_head_size", "split_size", "inner_dim"):
        v = getattr(module, name, None)
        if isinstance(v, int) and v == heads * head_dim:
            out[name] = h_new * head_dim
    return out


def _mlp_attrs(module: nn.Module, children: dict[str, dict[str, Sliced]]) -> dict[str, Any]:
    """``intermediate_size`` of an MLP module follows its up projection."""
    name = _first_attr(module, _MLP)
    if name is None:
        return {}
    for c in _MLP_IN:
        if c in children and isinstance(getattr(module, c, None), nn.Module):
            m = _out_mask(getattr(module, c), children[c])
            if m is not None and len(m) == getattr(module, name):
                return {name: int(m.sum())}
    return {}


# --- the build -------------------------------------------------------------------------------
def _owner(root: nn.Module, fqn: str) -> tuple[str, nn.Module, str]:
    path, _, name = fqn.rpartition(".")
    return path, root.get_submodule(path) if path else root, name


def _sliced(space: SearchSpace, removed_root: np.ndarray | None) -> dict[str, Sliced]:
    """Every parameter, buffer and tensor attribute of the model that loses positions, by FQN."""
    sig = space.capture.program.graph_signature
    out: dict[str, Sliced] = {}
    for spec in sig.input_specs:
        if spec.kind not in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            continue
        name = getattr(spec.arg, "name", None)
        if name is None or not space.has_channels(name) or spec.target is None:
            continue
        masks = space.keep_masks(name, removed_root)
        if all(m.all() for m in masks):
            continue
        out[spec.target] = Sliced(tuple(len(m) for m in masks), tuple(masks))
    return out


def _tensorless_norms(space: SearchSpace, removed_root: np.ndarray | None, modules: dict[str, nn.Module],
                      sliced: dict[str, Any]) -> dict[str, int]:
    """``num_features`` of norm layers without tensors (InstanceNorm without affine or running
    statistics): the channels their input keeps."""
    from ..ops import module_path

    want = {p for p, m in modules.items() if isinstance(m, nn.modules.batchnorm._NormBase) and p not in sliced}
    out: dict[str, int] = {}
    for node in space.capture.graph.nodes:
        if not want or node.op != "call_function":
            continue
        path = module_path(node)
        x = node.args[0] if node.args else None
        if path in want and isinstance(x, torch.fx.Node) and space.has_channels(x.name):
            sizes = space.kept_sizes(x.name, removed_root)
            if isinstance(sizes, list) and len(sizes) > 1 and isinstance(sizes[1], int):
                n = sizes[1]
                if n != getattr(modules[path], "num_features", n):
                    out[path] = n
                want.discard(path)
    return out


def _aliases(model: nn.Module) -> dict[int, list[str]]:
    """Every FQN under which each tensor is reachable (tied weights: more than one)."""
    out: dict[int, list[str]] = {}
    for fqn, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(
            remove_duplicate=False)):
        out.setdefault(id(t), []).append(fqn)
    return out


def _compare(ref: Any, out: Any) -> tuple[float, str]:
    a, _ = pytree.tree_flatten(ref)
    b, _ = pytree.tree_flatten(out)
    a = [x for x in a if isinstance(x, torch.Tensor)]
    b = [x for x in b if isinstance(x, torch.Tensor)]
    if len(a) != len(b):
        return math.inf, f"{len(b)} output tensors where the graph build gives {len(a)}"
    worst = 0.0
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape:
            return math.inf, f"output {i} has shape {tuple(y.shape)} where the graph build gives {tuple(x.shape)}"
        if not x.is_floating_point():
            if not torch.equal(x, y):
                return math.inf, f"output {i} differs"
            continue
        if x.numel():
            diff = (x.double() - y.double()).abs().max().item()
            scale = max(x.double().abs().max().item(), 1e-30)
            worst = max(worst, diff / scale)
    return worst, f"max relative difference {worst:.3g}"


class _Undo:
    """Records every change made to the model so that a failed build leaves it as it was."""

    def __init__(self) -> None:
        self._log: list[Callable[[], None]] = []

    def set_tensor(self, module: nn.Module, name: str, value: torch.Tensor) -> None:
        params, buffers = module._parameters, module._buffers
        if name in params:
            old_p = params[name]
            self._log.append(lambda: params.__setitem__(name, old_p))
            params[name] = value  # type: ignore[assignment]
        elif name in buffers:
            old_b = buffers[name]
            self._log.append(lambda: buffers.__setitem__(name, old_b))
            buffers[name] = value
        else:
            old = getattr(module, name)
            self._log.append(lambda: object.__setattr__(module, name, old))
            object.__setattr__(module, name, value)

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        old = getattr(obj, name)  # through a config's attribute_map too
        self._log.append(lambda: setattr(obj, name, old))
        setattr(obj, name, value)

    def rollback(self) -> None:
        for f in reversed(self._log):
            f()
        self._log.clear()


def _config_attrs(model: nn.Module, per_module: dict[str, dict[str, Any]],
                  heads: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """The model's ``config`` gets head counts and the MLP width when every layer has the same
    new values (a config holds one per model; per-layer sizes live on the modules)."""
    config = getattr(model, "config", None)
    if config is None:
        return {}
    out: dict[str, Any] = {}
    widths = {v for attrs in per_module.values() for k, v in attrs.items() if k in _MLP}
    if len(widths) == 1 and isinstance(getattr(config, "intermediate_size", None), int):
        out["intermediate_size"] = widths.pop()
    # without head_dim a config derives it as hidden_size // num_attention_heads: not after pruning
    if len(set(heads.values())) == 1 and isinstance(getattr(config, "head_dim", None), int):
        h, kv = next(iter(heads.values()))
        for name, v in (("num_attention_heads", h), ("num_key_value_heads", kv)):
            if isinstance(getattr(config, name, None), int):
                out[name] = v
    return out


def build_inplace(space: SearchSpace, plan: Plan, reference: Callable[[tuple[Any, ...]], Any], *,
                  model: nn.Module | None = None) -> nn.Module:
    """Slice ``space.model``'s own tensors by ``plan``, set its modules' size attributes, and check it against
    ``reference(inputs)`` (the graph build's outputs on the example inputs). On any error the model
    is left as it was. ``model``: slice this network of the analysed architecture instead."""
    if model is None:
        model = space.model
    else:
        space.weights_of(model)
        space.buffers_of(model)  # refused, naming the tensor, when it is not the analysed architecture
    if plan.erased_groups:
        groups = [space.erasing_groups[i] for i in plan.erased_groups]
        names = ", ".join(f"'{g.module or g.output}' (into {g.join_kind} {g.join})" for g in groups[:4])
        raise BuildError(f"the in-place build cannot erase operators yet, and {len(groups)} erasing group(s) are all "
                         f"zero: {names}{', …' if len(groups) > 4 else ''}. Use the graph build "
                         "(otonas.build(space)), or build with erased= set to all False to keep them (exactly zero)")
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_meta:
            raise BuildError("the model is on the meta device: load real weights before building")
    sliced = _sliced(space, plan.removed_root)
    aliases = _aliases(model)
    device = next((t.device for t in model.parameters()), None)
    inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) and device is not None else x
                   for x in space.capture.example_inputs)  # the model may have moved since analysis
    ref = reference(inputs)  # before anything changes

    # per module: own tensor name -> Sliced (tied tensors: every module that holds them)
    by_module: dict[str, dict[str, Sliced]] = {}
    tensors: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(dict(model.named_buffers(remove_duplicate=False)))
    new_values: dict[str, torch.Tensor] = {}
    for fqn, s in sliced.items():
        try:
            _, owner, name = _owner(model, fqn)
        except AttributeError:
            owner, name = model, ""
        old = tensors.get(fqn, getattr(owner, name, None) if name else None)
        if not isinstance(old, torch.Tensor):
            raise BuildError(f"the captured program reads tensor '{fqn}', which is not an attribute of the model "
                             "(a constant torch.export made): it cannot be sliced in place; build the graph "
                             "(otonas.build(space))")
        t = old.detach()
        for d, keep in enumerate(s.masks):
            if not keep.all():
                t = t.index_select(d, torch.from_numpy(np.nonzero(keep)[0]).to(t.device))
        t = t.clone()
        value: torch.Tensor = nn.Parameter(t, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else t
        for alias in aliases.get(id(old), [fqn]):
            if alias in new_values and alias != fqn:
                continue
            new_values[alias] = value
            path, _, tname = alias.rpartition(".")
            by_module.setdefault(path, {})[tname] = s

    # the attributes every touched module must get, before anything is changed
    modules = dict(model.named_modules(remove_duplicate=False))
    attrs: dict[str, dict[str, Any]] = {}
    for path, own in by_module.items():
        module = modules[path]
        r = resizer_for(module)
        where = _name(path, module)
        if r is None:
            unknown = _unknown_size_attrs(module, own)
            if unknown:
                raise BuildError(f"{where}: otonas has no resizer for this module type, and its attribute(s) "
                                 f"{', '.join(unknown)} hold sizes its tensors lost. Register one with "
                                 "otonas.build.register_resizer, or build the graph (otonas.build(space))")
            continue
        try:
            attrs[path] = r.attributes(module, own)
        except BuildError as e:
            raise BuildError(f"{where}: {e}") from None
    parents: dict[str, dict[str, dict[str, Sliced]]] = {}
    heads: dict[str, tuple[int, int]] = {}
    for path, own in by_module.items():
        parent, _, child = path.rpartition(".")
        if path:
            parents.setdefault(parent, {})[child] = own
    for path, children in parents.items():
        module = modules[path]
        extra = _attention_attrs(path, module, children, heads)
        extra.update(_mlp_attrs(module, children))
        if extra:
            attrs.setdefault(path, {}).update(extra)
    for path, n in _tensorless_norms(space, plan.removed_root, modules, by_module).items():
        attrs.setdefault(path, {})["num_features"] = n
    config_attrs = _config_attrs(model, attrs, heads)

    undo = _Undo()
    try:
        for fqn, value in new_values.items():
            _, owner, name = _owner(model, fqn)
            undo.set_tensor(owner, name, value)
        for path, values in attrs.items():
            for k, v in values.items():
                undo.set_attr(modules[path], k, v)
        config = getattr(model, "config", None)
        for k, v in config_attrs.items():
            undo.set_attr(config, k, v)
        try:
            with torch.no_grad(), _eval(model):
                out = model(*inputs)
        except Exception as e:
            at = _failing_module(e, modules)
            hint = ("; torch's grouped_mm (MoE experts) needs every kept width times the element size to be a "
                    "multiple of 16 bytes: train with round_to=4 (float32) or 8 (bfloat16), or build the graph"
                    if "multiple of 16 bytes" in str(e) else "")
            raise BuildError(f"the model sliced in place fails on the example inputs"
                             + (f" in {_name(at, modules[at])}" if at is not None else "")
                             + f" ({type(e).__name__}: {e}){hint}; {_suspects(by_module, attrs, modules)}") from e
        diff, why = _compare(ref, out)
        if not diff <= RTOL:
            raise BuildError(f"the model sliced in place does not reproduce the graph build ({why}); "
                             f"{_suspects(by_module, attrs, modules)}")
    except BaseException:
        undo.rollback()
        raise
    return model


def _name(path: str, module: nn.Module) -> str:
    return f"module '{path}' ({type(module).__name__})" if path else f"the model itself ({type(module).__name__})"


def _failing_module(e: BaseException, modules: dict[str, nn.Module]) -> str | None:
    """The innermost module of the model whose code was running when ``e`` was raised."""
    path_of = {id(m): p for p, m in modules.items()}
    found = None
    tb = e.__traceback__
    while tb is not None:
        me = tb.tb_frame.f_locals.get("self")
        if id(me) in path_of:
            found = path_of[id(me)]
        tb = tb.tb_next
    return found


def _suspects(by_module: dict[str, Any], attrs: dict[str, Any], modules: dict[str, nn.Module]) -> str:
    """Name the modules most likely at fault: those sliced with no size attributes set."""
    plain = [_name(p, modules[p]) for p in by_module if p not in attrs]
    parents = sorted({p.rpartition(".")[0] for p in by_module} - set(attrs))
    parts = []
    if plain:
        parts.append("sliced without a resizer: " + ", ".join(plain[:6]) + (", …" if len(plain) > 6 else ""))
    if parents:
        parts.append("modules whose children were sliced and whose own attributes otonas left as they were: "
                     + ", ".join(_name(p, modules[p]) for p in parents[:6])
                     + (", …" if len(parents) > 6 else ""))
    return "; ".join(parts) + ". The model was left unchanged; build the graph (otonas.build(space)) instead"


class _eval:
    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.modes = {m: m.training for m in self.model.modules()}
        self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        for m, t in self.modes.items():
            m.training = t
