"""Which graph nodes become ``torch.nn`` layers in the generated code.

A layer rule looks at one node (an ``aten.conv2d`` whose weight is ``layer1.0.conv1.weight``)
and returns the :class:`LayerSpec` it stands for: ``nn.Conv2d(64, 40, 3, padding=1,
bias=False)`` at path ``layer1.0.conv1``. It returns ``None`` when the node is not a plain
layer call (a weight computed in the graph, a bias that belongs elsewhere); the op is then
written as a functional call. The same rules read the original graph, which gives the
sizes before pruning for ``architecture.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from ..analysis import Registry
from ._expr import Call, Expr, literal, squash

__all__ = ["LayerSpec", "LayerCall", "LAYER_RULES", "torch_module_class"]


@dataclass(frozen=True)
class LayerSpec:
    """One ``torch.nn`` layer of the generated module."""

    path: str  # module path in the original network, e.g. "layer1.0.conv1"
    cls: str  # "Conv2d" (a class of torch.nn)
    args: tuple[str, ...]  # constructor arguments as source
    state: tuple[str, ...]  # tensors the layer owns: "weight", "bias", "running_mean", ...
    bound: tuple[tuple[str, str], ...]  # (node argument, state name): arguments that must read path.state
    input: str  # the node argument the layer is called with
    channels: tuple[tuple[str, int], ...]  # ("in", 64), ("out", 40) / ("features", 40)

    @property
    def ctor(self) -> str:
        return f"nn.{self.cls}({', '.join(self.args)})"


class LayerCall(Call):
    """A :class:`Call` for layer rules: constants render as literals, tensors are looked up."""

    def __init__(self, node: fx.Node, target: Any, values: dict[str, Any], defaults: dict[str, Any], *,
                 fqn: Callable[[Any], str | None], tensor: Callable[[Any], torch.Tensor | None],
                 module: Callable[[str], nn.Module | None], module_type: str | None, rank: int | None) -> None:
        super().__init__(node, target, values, defaults, self._literal, None)
        self._fqn = fqn
        self._tensor = tensor
        self.module = module  # the original nn.Module at a path, when the original model is known
        self.module_type = module_type  # e.g. "torch.nn.modules.batchnorm.BatchNorm2d"
        self.rank = rank  # rank of the node's first input, when known

    @staticmethod
    def _literal(v: Any) -> Expr:
        if isinstance(v, fx.Node):
            raise _NotALayer
        return literal(squash(v))

    def fqn(self, name: str) -> str | None:
        v = self[name]
        return self._fqn(v) if isinstance(v, fx.Node) else None

    def tensor(self, name: str) -> torch.Tensor | None:
        v = self[name]
        return self._tensor(v) if isinstance(v, fx.Node) else None

    def path_of(self, name: str, leaf: str) -> str | None:
        """The module path whose ``leaf`` tensor the argument ``name`` is, or None."""
        fqn = self.fqn(name)
        if fqn is None or "." not in fqn:
            return None
        path, last = fqn.rsplit(".", 1)
        return path if last == leaf else None

    def reads(self, name: str, path: str, leaf: str) -> bool:
        v = self[name]
        return v is None or self.fqn(name) == f"{path}.{leaf}"


class _NotALayer(Exception):
    pass


LAYER_RULES: Registry[Callable[[LayerCall], LayerSpec | None]] = Registry("export layer rule")
layer = LAYER_RULES.register


def torch_module_class(type_name: str | None) -> str | None:
    """``"torch.nn.modules.batchnorm.BatchNorm2d"`` -> ``"BatchNorm2d"``; None for other classes."""
    if not type_name or not type_name.startswith("torch.nn.modules."):
        return None
    return type_name.rsplit(".", 1)[1]


def run_rule(fn: Callable[[LayerCall], LayerSpec | None], call: LayerCall) -> LayerSpec | None:
    try:
        return fn(call)
    except _NotALayer:
        return None


def _kw(c: LayerCall, *names: str) -> list[str]:
    return c.changed(*names)


def _nn_kw(c: LayerCall, name: str, default: Any, as_name: str | None = None) -> list[str]:
    """``eps=0.001`` where the value differs from the nn layer's default."""
    v = c[name]
    return [] if v == default else [f"{as_name or name}={literal(v).text}"]


def _conv_common(c: LayerCall, n: int, transposed: bool) -> LayerSpec | None:
    w = c.tensor("weight")
    path = c.path_of("weight", "weight")
    if w is None or path is None or not c.reads("bias", path, "bias") or w.dim() != n + 2:
        return None
    groups = int(c["groups"])
    if transposed:
        cin, cout = int(w.shape[0]), int(w.shape[1]) * groups
    else:
        cin, cout = int(w.shape[1]) * groups, int(w.shape[0])
    args = [str(cin), str(cout), literal(squash(list(w.shape[2:]))).text]
    names = ("stride", "padding", "output_padding", "groups") if transposed else ("stride", "padding", "dilation",
                                                                                  "groups")
    args += _kw(c, *names)
    if c["bias"] is None:
        args.append("bias=False")
    if transposed:
        args += _kw(c, "dilation")
    state = ("weight",) + (("bias",) if c["bias"] is not None else ())
    cls = f"ConvTranspose{n}d" if transposed else f"Conv{n}d"
    return LayerSpec(path, cls, tuple(args), state, (("weight", "weight"), ("bias", "bias")), "input",
                     (("in", cin), ("out", cout)))


@layer("aten.conv1d", "aten.conv2d", "aten.conv3d")
def _conv(c: LayerCall) -> LayerSpec | None:
    return _conv_common(c, int(str(c.target).split(".")[1][4]), transposed=False)


@layer("aten.conv_transpose1d", "aten.conv_transpose2d", "aten.conv_transpose3d")
def _conv_transpose(c: LayerCall) -> LayerSpec | None:
    return _conv_common(c, int(str(c.target).split(".")[1][-2]), transposed=True)


@layer("aten.convolution")
def _convolution(c: LayerCall) -> LayerSpec | None:
    n = len(c["stride"])
    if not c["transposed"] and any(int(p) != 0 for p in c["output_padding"]):
        return None
    return _conv_common(c, n, transposed=bool(c["transposed"]))


@layer("aten.linear")
def _linear(c: LayerCall) -> LayerSpec | None:
    w = c.tensor("weight")
    path = c.path_of("weight", "weight")
    if w is None or path is None or w.dim() != 2 or not c.reads("bias", path, "bias"):
        return None
    args = [str(int(w.shape[1])), str(int(w.shape[0]))] + (["bias=False"] if c["bias"] is None else [])
    state = ("weight",) + (("bias",) if c["bias"] is not None else ())
    return LayerSpec(path, "Linear", tuple(args), state, (("weight", "weight"), ("bias", "bias")), "input",
                     (("in", int(w.shape[1])), ("out", int(w.shape[0]))))


def _norm_path(c: LayerCall) -> tuple[str, int, bool, bool] | None:
    """(path, features, affine, tracks running stats) of a batch/instance norm node."""
    w, rm = c.tensor("weight"), c.tensor("running_mean")
    ref = "weight" if c["weight"] is not None else "running_mean"
    path = c.path_of(ref, ref)
    if path is None:
        return None
    affine, track = c["weight"] is not None, c["running_mean"] is not None
    if affine != (c["bias"] is not None) or track != (c["running_var"] is not None):
        return None
    if not all(c.reads(k, path, k) for k in ("weight", "bias", "running_mean", "running_var")):
        return None
    t = w if w is not None else rm
    assert t is not None
    return path, int(t.shape[0]), affine, track


def _momentum(c: LayerCall, path: str) -> list[str]:
    orig = c.module(path)
    if orig is not None and hasattr(orig, "momentum"):
        m = orig.momentum  # the captured graph holds 0.0 where the module's momentum is None
        return [] if m == 0.1 else [f"momentum={m!r}"]
    return _nn_kw(c, "momentum", 0.1)


@layer("aten.batch_norm")
def _batch_norm(c: LayerCall) -> LayerSpec | None:
    found = _norm_path(c)
    if found is None:
        return None
    path, features, affine, track = found
    if track == bool(c["training"]):  # running stats tracked but batch stats used (or the reverse): not nn's rule
        return None
    cls = torch_module_class(c.module_type)
    if cls not in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"):
        cls = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}.get(c.rank or 0)
        if cls is None:
            return None
    args = [str(features)] + _nn_kw(c, "eps", 1e-5) + _momentum(c, path)
    args += ([] if affine else ["affine=False"]) + ([] if track else ["track_running_stats=False"])
    state = (("weight", "bias") if affine else ()) + (("running_mean", "running_var", "num_batches_tracked")
                                                      if track else ())
    bound = tuple((k, k) for k in ("weight", "bias", "running_mean", "running_var"))
    return LayerSpec(path, cls, tuple(args), state, bound, "input", (("features", features),))


@layer("aten.instance_norm")
def _instance_norm(c: LayerCall) -> LayerSpec | None:
    found = _norm_path(c)
    if found is None:
        return None
    path, features, affine, track = found
    if bool(c["use_input_stats"]) == track:
        return None
    cls = torch_module_class(c.module_type)
    if cls not in ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"):
        cls = {3: "InstanceNorm1d", 4: "InstanceNorm2d", 5: "InstanceNorm3d"}.get(c.rank or 0)
        if cls is None:
            return None
    args = [str(features)] + _nn_kw(c, "eps", 1e-5) + _momentum(c, path)
    args += (["affine=True"] if affine else []) + (["track_running_stats=True"] if track else [])
    state = (("weight", "bias") if affine else ()) + (("running_mean", "running_var", "num_batches_tracked")
                                                      if track else ())
    bound = tuple((k, k) for k in ("weight", "bias", "running_mean", "running_var"))
    return LayerSpec(path, cls, tuple(args), state, bound, "input", (("features", features),))


@layer("aten.layer_norm")
def _layer_norm(c: LayerCall) -> LayerSpec | None:
    w = c.tensor("weight")
    path = c.path_of("weight", "weight")
    if w is None or path is None or not c.reads("bias", path, "bias"):
        return None
    shape = list(c["normalized_shape"])
    if list(w.shape) != shape:
        return None
    args = [literal(shape[0] if len(shape) == 1 else tuple(shape)).text] + _kw(c, "eps")
    if c["bias"] is None:
        args.append("bias=False")
    state = ("weight",) + (("bias",) if c["bias"] is not None else ())
    return LayerSpec(path, "LayerNorm", tuple(args), state, (("weight", "weight"), ("bias", "bias")), "input",
                     (("features", int(w.numel())),))


@layer("aten.group_norm")
def _group_norm(c: LayerCall) -> LayerSpec | None:
    w = c.tensor("weight")
    path = c.path_of("weight", "weight")
    if w is None or path is None or c["bias"] is None or not c.reads("bias", path, "bias"):
        return None
    args = [c.t("num_groups"), str(int(w.shape[0]))] + _kw(c, "eps")
    return LayerSpec(path, "GroupNorm", tuple(args), ("weight", "bias"), (("weight", "weight"), ("bias", "bias")),
                     "input", (("features", int(w.shape[0])),))


@layer("aten.embedding")
def _embedding(c: LayerCall) -> LayerSpec | None:
    w = c.tensor("weight")
    path = c.path_of("weight", "weight")
    if w is None or path is None or w.dim() != 2:
        return None
    args = [str(int(w.shape[0])), str(int(w.shape[1]))]
    if c["padding_idx"] not in (None, -1):
        args.append(f"padding_idx={c.t('padding_idx')}")
    args += _kw(c, "scale_grad_by_freq", "sparse")
    return LayerSpec(path, "Embedding", tuple(args), ("weight",), (("weight", "weight"),), "indices",
                     (("features", int(w.shape[1])),))


@layer("aten.prelu")
def _prelu(c: LayerCall) -> LayerSpec | None:
    w = c.tensor("weight")
    path = c.path_of("weight", "weight")
    if w is None or path is None or w.dim() != 1:
        return None
    args = [] if w.numel() == 1 else [str(int(w.numel()))]
    return LayerSpec(path, "PReLU", tuple(args), ("weight",), (("weight", "weight"),), "self",
                     (("features", int(w.numel())),))


_DROPOUTS = {"aten.dropout": ("Dropout",), "aten.feature_dropout": ("Dropout1d", "Dropout2d", "Dropout3d"),
             "aten.alpha_dropout": ("AlphaDropout",), "aten.feature_alpha_dropout": ("FeatureAlphaDropout",)}


@layer(*_DROPOUTS)
def _dropout(c: LayerCall) -> LayerSpec | None:
    """nn.Dropout modules: in eval the graph holds ``dropout(x, p, False)``; the layer brings train mode back."""
    cls = torch_module_class(c.module_type)
    packet = str(c.target).rsplit(".", 1)[0]
    if cls not in _DROPOUTS.get(packet, ()) or bool(c["train"]):
        return None
    path = c.node.meta["nn_module_stack"] and list(c.node.meta["nn_module_stack"].values())[-1][0]
    if not path:
        return None
    return LayerSpec(path, cls, (c.t("p"),), (), (), "input", ())
