"""SGD's momentum step of many small weights as a few operations on one flat buffer.

A supernet holds thousands of weights of a few hundred elements (every candidate op's
convolutions, biases and norm weights). Their base step costs what the calls cost: each of
SGD's multi-tensor calls visits them one by one, and masking the zero groups' gradients is a
call per grouped slice. Here their momentum buffers live side by side in one flat tensor (the
optimizer state holds views of it, so that ``state_dict``, the masks and the projections see
ordinary per-parameter buffers), and a step is: concatenate the gradients (and the weights, for
the weight decay), fill the zero groups' elements with zeros (one call), SGD's momentum update
on the flat buffer — the same elementwise arithmetic as ``torch.optim.SGD(foreach=True)``, so
the same bits — and the buffers, views of it, are the directions. The parameters' ``.grad`` are
left as they came (as the fused loops of ``_kernels`` leave theirs); what the base rule reads
is masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._layout import ParamPlan

__all__ = ["FlatMomentum"]


class FlatMomentum:
    """The momentum buffers of the parameters at ``positions`` (same dtype and device), packed."""

    def __init__(self, positions: Sequence[int], params: Sequence[Tensor], plans: Sequence[ParamPlan]) -> None:
        self.positions = tuple(positions)
        self.members = frozenset(self.positions)
        xs = [params[i] for i in self.positions]
        self.numel = sum(x.numel() for x in xs)
        self._buf: Tensor | None = None
        self._views: list[Tensor] = []
        # every (element, group) pair of the grouped slices among them, to mask the zero groups
        offset = {}
        o = 0
        for i, x in zip(self.positions, xs):
            offset[i] = o
            o += x.numel()
        dev = xs[0].device
        elements: list[Tensor] = []
        groups: list[Tensor] = []
        for q in plans:
            if q.position not in offset:
                continue
            ids = torch.arange(params[q.position].numel(), device=dev)
            for e in q.entries:
                elements.append(ids + offset[q.position])
                groups.append(e.index[(ids // e.post) % e.size])
        self._elements = torch.cat(elements) if elements else torch.zeros(0, dtype=torch.int64, device=dev)
        self._groups = torch.cat(groups) if groups else torch.zeros(0, dtype=torch.int64, device=dev)
        self._dead: tuple[Tensor, Tensor] | None = None  # (the zero set it was made for, per element: in one)
        self._gather: tuple[tuple[int, ...], Tensor] | None = None  # see packed
        self._where: dict[int, int] | None = None  # position -> member number, see packed
        self._x: tuple[int, Tensor] | None = None  # (step, the weights concatenated by directions then)
        # scratch the gradients / weights are copied into by one multi-tensor call (see _packed_copy)
        self._scratch: dict[str, tuple[Tensor, list[Tensor]]] = {}

    def packed(self, positions: tuple[int, ...], d: Sequence[Tensor | None],
               step: int) -> tuple[Tensor | None, Tensor] | None:
        """The weights and the directions ``d`` of ``positions``, each concatenated, read off the
        flat buffers of step ``step`` (one gather each, or the buffer itself when ``positions`` are
        all the members in order, instead of a concatenation of many small tensors): when ``d`` holds
        this step's buffers for all of them; else None. The weights are None unless this step's
        :meth:`directions` concatenated them (weight decay)."""
        if self._buf is None or not self.members.issuperset(positions):
            return None
        if self._where is None:
            self._where = {i: k for k, i in enumerate(self.positions)}
        where = self._where
        if any(d[i] is not self._views[where[i]] for i in positions):
            return None
        x = self._x[1] if self._x is not None and self._x[0] == step else None
        if positions == self.positions:  # the buffers themselves (a gather would copy them as they are)
            return x, self._buf
        if self._gather is None or self._gather[0] != positions:
            offsets = [0]
            for v in self._views:
                offsets.append(offsets[-1] + v.numel())
            ranges = [torch.arange(offsets[where[i]], offsets[where[i] + 1], device=self._buf.device)
                      for i in positions]
            self._gather = (positions, torch.cat(ranges))
        idx = self._gather[1]
        return None if x is None else x[idx], self._buf[idx]

    def usable(self, params: Sequence[Tensor]) -> bool:
        """Whether this step can go through the flat buffer: every member has a dense gradient of its dtype."""
        for i in self.positions:  # (torch itself refuses a .grad of another dtype or device)
            g = params[i].grad
            if g is None or g.is_sparse:
                return False
        return True

    def _attach(self, states: Sequence[dict[str, Any]], params: Sequence[Tensor]) -> bool | None:
        """Make the state's buffers views of the flat one. True: they are; False: none exists yet
        (the first step); None: some exist and some do not, or they do not fit (the caller falls
        back to the per-tensor step)."""
        have = [s.get("momentum_buffer") for s in states]
        if self._buf is not None and all(h is v for h, v in zip(have, self._views)):
            return True
        if all(h is None for h in have):
            return False
        xs = [params[i] for i in self.positions]
        if any(h is None or h.shape != x.shape or h.dtype != x.dtype or h.device != x.device
               for h, x in zip(have, xs)):
            return None
        self._adopt(torch.cat([h.reshape(-1) for h in have if h is not None]), states, xs)  # loaded or set elsewhere
        return True

    def _adopt(self, flat: Tensor, states: Sequence[dict[str, Any]], xs: Sequence[Tensor]) -> None:
        self._buf = flat
        self._views = [v.view(x.shape) for v, x in zip(flat.split([x.numel() for x in xs]), xs)]
        for s, v in zip(states, self._views):
            s["momentum_buffer"] = v

    def directions(self, params: Sequence[Tensor], states: Sequence[dict[str, Any]], hp: dict[str, Any],
                   zero: Tensor | None, step: int) -> list[Tensor] | None:
        """SGD's momentum step (momentum > 0, no Nesterov) for the members, their gradients'
        entries in the groups of ``zero`` (bool ``[N + 1]``; None: none) taken as zero; returns
        their buffers (the directions), or None when the per-tensor step must run instead.
        ``step``: the optimizer's step count, which the weights concatenated here are kept for."""
        attached = self._attach(states, params)
        if attached is None:
            return None
        xs = [params[i] for i in self.positions]
        grads = [gr for x in xs if (gr := x.grad) is not None]
        if len(grads) != len(xs):  # usable() was not asked: the per-tensor step
            return None
        g = self._packed_copy("grad", grads, xs)
        if zero is not None and self._elements.numel():
            g.masked_fill_(self._dead_elements(zero), 0)
        wd = hp["weight_decay"]
        self._x = None
        if wd != 0:
            xcat = self._packed_copy("x", xs, xs)
            self._x = (step, xcat)  # the statistics of this step read them (before the step moves them)
            g = torch.add(g, xcat, alpha=wd)
        if not attached:  # as SGDRule's first step: the buffer starts as the (decayed) gradient
            self._adopt(g.clone() if wd == 0 else g, states, xs)  # its own tensor, not the scratch
            return self._views
        assert self._buf is not None
        self._buf.mul_(hp["momentum"]).add_(g, alpha=1 - hp["dampening"])
        return self._views

    def _packed_copy(self, name: str, tensors: list[Tensor], xs: Sequence[Tensor]) -> Tensor:
        """``tensors`` (shaped like the members ``xs``) concatenated, flattened, into the scratch
        ``name`` by one multi-tensor copy (a concatenation of reshaped tensors costs a Python call
        per member: ~1 ms a step for a supernet's ~500 small weights). Valid until the next call."""
        got = self._scratch.get(name)
        ref = tensors[0]
        if got is None or got[0].dtype != ref.dtype or got[0].device != ref.device:
            flat = torch.empty(self.numel, dtype=ref.dtype, device=ref.device)
            views = [v.view(x.shape) for v, x in zip(flat.split([x.numel() for x in xs]), xs)]
            got = self._scratch[name] = (flat, views)
        torch._foreach_copy_(got[1], tensors)
        return got[0]

    def _dead_elements(self, zero: Tensor) -> Tensor:
        """Per packed element: whether one of its groups is in ``zero`` (kept while ``zero`` is)."""
        if self._dead is None or self._dead[0] is not zero:
            hits = torch.zeros(self.numel, dtype=torch.int32, device=zero.device)
            hits.index_add_(0, self._elements, zero[self._groups].to(torch.int32))
            self._dead = (zero, hits > 0)
        return self._dead[1]
