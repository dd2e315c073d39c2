"""The base optimizers DHSPG builds on: each turns gradients into a step direction d.

A step of the base optimizer alone is ``x ← x − lr·d``. DHSPG takes d from one of these
rules, adds its own term on the redundant groups and projects; everywhere else the step is
exactly the base step. The rules follow ``torch.optim.SGD`` and ``torch.optim.Adam`` /
``AdamW`` (same state names, same defaults) and use multi-tensor (``_foreach``) kernels.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["BaseRule", "SGDRule", "AdamRule", "make_rule"]


class BaseRule(abc.ABC):
    """Turns gradients into step directions and keeps the per-parameter state that needs.

    DHSPG calls :meth:`directions` once per step with the parameters that have a gradient.
    """

    state_keys: tuple[str, ...] = ()
    """Per-parameter state tensors shaped like the parameter; DHSPG zeroes their entries
    that belong to a zeroed group, so that no momentum can revive it."""

    @abc.abstractmethod
    def directions(self, params: Sequence[Tensor], grads: Sequence[Tensor], states: Sequence[dict[str, Any]],
                   hp: dict[str, Any]) -> list[Tensor]:
        """Update the state and return d for each parameter (the base step is ``x − lr·d``).

        The returned tensors may alias the state or the gradients: read them, never write them.
        """


class SGDRule(BaseRule):
    """``torch.optim.SGD``: momentum, dampening, Nesterov, (coupled) weight decay.

    Same arithmetic as ``torch.optim.SGD(foreach=True)``, bit for bit. With momentum (and
    no Nesterov) the weight-decayed gradient goes through one reused scratch tensor instead
    of a fresh parameter-sized allocation per step, which on CPU costs more than the math.
    """

    state_keys = ("momentum_buffer",)

    def __init__(self) -> None:
        self._scratch: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def _decayed(self, g: Tensor, p: Tensor, wd: float) -> Tensor:
        key = (g.device, g.dtype)
        flat = self._scratch.get(key)
        if flat is None or flat.numel() < g.numel():
            flat = self._scratch[key] = torch.empty(g.numel(), dtype=g.dtype, device=g.device)
        return torch.add(g, p, alpha=wd, out=flat[: g.numel()].view(g.shape))

    def directions(self, params: Sequence[Tensor], grads: Sequence[Tensor], states: Sequence[dict[str, Any]],
                   hp: dict[str, Any]) -> list[Tensor]:
        grads = list(grads)
        wd, momentum = hp["weight_decay"], hp["momentum"]
        if momentum != 0 and not hp["nesterov"] and wd != 0:
            bufs = []
            small: list[int] = []  # many small tensors: multi-tensor calls (a Python loop costs more there)
            for i, (p, g, s) in enumerate(zip(params, grads, states)):
                buf = s.get("momentum_buffer")
                if buf is None:
                    buf = s["momentum_buffer"] = torch.add(g, p, alpha=wd).detach()
                elif p.numel() < _SCRATCH_MIN:
                    small.append(i)
                else:
                    buf.mul_(momentum).add_(self._decayed(g, p, wd), alpha=1 - hp["dampening"])
                bufs.append(buf)
            if small:
                decayed = torch._foreach_add([grads[i] for i in small], [params[i] for i in small], alpha=wd)
                torch._foreach_mul_([bufs[i] for i in small], momentum)
                torch._foreach_add_([bufs[i] for i in small], decayed, alpha=1 - hp["dampening"])
            return bufs
        if wd != 0:
            grads = list(torch._foreach_add(grads, list(params), alpha=wd))
        if momentum == 0:
            return grads
        bufs = []
        old_bufs: list[Tensor] = []
        old_grads: list[Tensor] = []
        for s, g in zip(states, grads):
            buf = s.get("momentum_buffer")
            if buf is None:
                buf = s["momentum_buffer"] = torch.clone(g).detach()
            else:
                old_bufs.append(buf)
                old_grads.append(g)
            bufs.append(buf)
        if old_bufs:
            torch._foreach_mul_(old_bufs, momentum)
            torch._foreach_add_(old_bufs, old_grads, alpha=1 - hp["dampening"])
        if hp["nesterov"]:
            return list(torch._foreach_add(grads, bufs, alpha=momentum))
        return bufs


_SCRATCH_MIN = 1 << 14
"""Tensors with fewer elements take SGD's momentum step through multi-tensor calls (a fresh
weight-decayed gradient each, cheap when small) instead of one at a time through the scratch."""


class AdamRule(BaseRule):
    """``torch.optim.Adam`` (``decoupled=False``) or ``torch.optim.AdamW`` (``decoupled=True``).

    With decoupled decay the returned direction includes ``weight_decay·x``, so that
    ``x − lr·d`` is AdamW's ``x·(1 − lr·wd) − lr·adam_step``.
    """

    state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, *, decoupled: bool) -> None:
        self.decoupled = decoupled

    def directions(self, params: Sequence[Tensor], grads: Sequence[Tensor], states: Sequence[dict[str, Any]],
                   hp: dict[str, Any]) -> list[Tensor]:
        params = list(params)
        grads = list(grads)
        beta1, beta2 = hp["betas"]
        wd = hp["weight_decay"]
        if wd != 0 and not self.decoupled:
            grads = list(torch._foreach_add(grads, params, alpha=wd))
        for s, p in zip(states, params):
            if "exp_avg" not in s:
                s["step"] = 0
                s["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                s["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            s["step"] += 1
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        steps = [s["step"] for s in states]
        bias1 = [1 - beta1 ** k for k in steps]
        bias2_sqrt = [(1 - beta2 ** k) ** 0.5 for k in steps]
        denom = list(torch._foreach_sqrt(exp_avg_sqs))
        torch._foreach_div_(denom, bias2_sqrt)
        torch._foreach_add_(denom, hp["eps"])
        out = list(torch._foreach_div(exp_avgs, denom))
        torch._foreach_div_(out, bias1)
        if wd != 0 and self.decoupled:
            torch._foreach_add_(out, params, alpha=wd)
        return out


def make_rule(variant: str) -> BaseRule:
    """The rule for ``variant`` ("sgd", "adam" or "adamw"); the caller has validated it."""
    if variant == "sgd":
        return SGDRule()
    return AdamRule(decoupled=variant == "adamw")
