"""Fold inference BatchNorms into the convolutions before them, in a built network.

``otonas.build`` returns an inference graph in which BatchNorm runs on its running statistics.
A BatchNorm whose input is a convolution used by nothing else is then an affine map per output
channel, and it can be folded into that convolution's weight and bias:

    scale = gamma / sqrt(running_var + eps)
    W'    = W · scale  (per output channel)
    b'    = (b − running_mean) · scale + beta

The folded network computes the same function up to float rounding and skips a pass over every
activation the BatchNorm read and wrote: at inference that pass is memory-bound, so it shrinks
with the kept channels only, not with the MACs (bench/README.md, "Real speed-up"). Fold the full
network and its subnet alike when comparing them.
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

from ..errors import BuildError

__all__ = ["fold_batchnorm"]

_CONVS = {torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default, torch.ops.aten.conv3d.default,
          torch.ops.aten.convolution.default}
_BN = torch.ops.aten.batch_norm.default
_BN_LEGIT = torch.ops.aten._native_batch_norm_legit_no_training.default


def _attr(gm: fx.GraphModule, node: object) -> torch.Tensor | None:
    """The tensor a ``get_attr`` node reads, else None (also for None itself)."""
    if isinstance(node, fx.Node) and node.op == "get_attr":
        value = gm
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value if isinstance(value, torch.Tensor) else None
    return None


def _set(gm: fx.GraphModule, target: str, value: torch.Tensor) -> None:
    owner_path, _, name = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    if name in owner._parameters:
        owner._parameters[name] = nn.Parameter(value, requires_grad=False)
    elif name in owner._buffers:
        owner._buffers[name] = value
    else:
        setattr(owner, name, nn.Parameter(value, requires_grad=False))


def _fresh_name(gm: fx.GraphModule, base: str) -> str:
    owner_path, _, name = base.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    candidate, i = name, 0
    while hasattr(owner, candidate):
        i += 1
        candidate = f"{name}_{i}"
    return f"{owner_path}.{candidate}" if owner_path else candidate


def _drop_unused_attrs(gm: fx.GraphModule, candidates: set[str]) -> None:
    """Delete the tensors named in ``candidates`` that no ``get_attr`` reads any more."""
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for name in sorted(candidates - used):
        owner_path, _, leaf = name.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        owner._parameters.pop(leaf, None)
        owner._buffers.pop(leaf, None)


@torch.no_grad()
def fold_batchnorm(gm: fx.GraphModule) -> int:
    """Fold every inference BatchNorm that directly follows a convolution (one used by nothing
    else, weights stored on the module, not transposed) into that convolution, in place.

    ``gm`` is what :func:`otonas.build` returned (or any GraphModule of ATen ops whose
    BatchNorms run on running statistics: ``aten.batch_norm`` with ``training=False``, or
    ``aten._native_batch_norm_legit_no_training``). Other BatchNorms are left as they are.
    Returns how many were folded. The network must be in eval mode for the result to be the
    same function; training it afterwards trains the folded convolutions (there is no BatchNorm
    left to update).
    """
    if not isinstance(gm, fx.GraphModule):
        raise BuildError(f"fold_batchnorm takes the GraphModule otonas.build returns, not {type(gm).__name__}")
    graph = gm.graph
    folded = 0
    replaced: set[str] = set()  # the targets of the conv and BatchNorm tensors folded away
    for bn in list(graph.nodes):
        if bn.op != "call_function" or bn.target not in (_BN, _BN_LEGIT):
            continue
        if bn.target is _BN:
            if len(bn.args) < 8 or bn.args[5] is not False:
                continue  # training-mode statistics: not an affine map
            eps = float(bn.args[7])
            out_nodes = [bn]
        else:
            eps = float(bn.args[6])
            users = list(bn.users)
            if not all(u.op == "call_function" and u.target is operator.getitem for u in users):
                continue
            if any(u.args[1] != 0 for u in users):
                continue  # the saved mean / invstd are read: leave it
            out_nodes = users
        conv = bn.args[0]
        if not (isinstance(conv, fx.Node) and conv.op == "call_function" and conv.target in _CONVS
                and len(conv.users) == 1):
            continue
        if conv.target is torch.ops.aten.convolution.default and bool(conv.args[6]):
            continue  # transposed: its weight's channel axis is another one
        w_node, b_node = conv.args[1], conv.args[2] if len(conv.args) > 2 else None
        weight = _attr(gm, w_node)
        if weight is None or (b_node is not None and _attr(gm, b_node) is None):
            continue
        gamma, beta, mean, var = (_attr(gm, a) for a in bn.args[1:5])
        if mean is None or var is None or (bn.args[1] is not None and gamma is None) or (
                bn.args[2] is not None and beta is None):
            continue
        bias = _attr(gm, b_node)
        c = weight.shape[0]
        if mean.numel() != c:
            continue
        scale = (gamma.double() if gamma is not None else torch.ones(c, dtype=torch.float64, device=weight.device)) \
            / torch.sqrt(var.double() + eps)
        shift = beta.double() if beta is not None else torch.zeros(c, dtype=torch.float64, device=weight.device)
        new_w = (weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))).to(weight.dtype)
        old_b = bias.double() if bias is not None else torch.zeros(c, dtype=torch.float64, device=weight.device)
        new_b = ((old_b - mean.double()) * scale + shift).to(weight.dtype)
        assert isinstance(w_node, fx.Node)
        w_target = _fresh_name(gm, f"{w_node.target}_folded")
        b_target = _fresh_name(gm, f"{w_node.target}_folded_bias")
        _set(gm, w_target, new_w.contiguous())
        _set(gm, b_target, new_b.contiguous())
        with graph.inserting_before(conv):
            nw = graph.get_attr(w_target)
            nb = graph.get_attr(b_target)
        args = list(conv.args)
        while len(args) < 3:
            args.append(None)
        args[1], args[2] = nw, nb
        conv.args = tuple(args)
        replaced.update(str(a.target) for a in (w_node, b_node, *bn.args[1:5])
                        if isinstance(a, fx.Node) and a.op == "get_attr")
        for o in out_nodes:
            o.replace_all_uses_with(conv)
        for o in out_nodes:
            if o is not bn:
                graph.erase_node(o)
        graph.erase_node(bn)
        folded += 1
    if folded:
        graph.eliminate_dead_code()
        graph.lint()
        _drop_unused_attrs(gm, replaced)
        gm.recompile()
    return folded
