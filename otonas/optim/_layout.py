"""Where the prunable groups live in the parameters, and per-group sums over them.

``SearchSpace.group_layout()`` says, for each parameter and some of its dims, which group
each slice along that dim belongs to. Everything the optimizers compute per group is a sum,
over the group's elements, of some elementwise quantity (x·d, x², d², |x|). Such a sum
splits into two reductions:

1. within a parameter: sum the elementwise tensor over everything but the grouped dim,
   giving one value per slice (a row or column sum of a 2-D view, taken as a matrix-vector
   product; for a large weight grouped along both of its channel dims, :func:`block_sums`
   takes the products a block of rows at a time and reduces them while they are in cache);
2. across parameters: one ``index_add_`` of all those per-slice values into per-group
   accumulators, with the slices' group ids concatenated once at construction.

So a step costs a few elementwise passes per parameter plus one segment sum, whatever the
number of groups; nothing loops over groups in Python. Slices in no group carry the id
``N`` (one past the last group): a bin that is never read.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import OtonasError

__all__ = ["SearchSpaceLike", "GroupLayout", "Entry", "ParamPlan", "SliceTable", "slice_index", "block_sums", "BLOCK",
           "BLAS"]


class SearchSpaceLike(Protocol):
    """What the optimizers read from a search space (``otonas.SearchSpace`` has it)."""

    @property
    def model(self) -> nn.Module: ...

    @property
    def num_prunable_groups(self) -> int: ...

    def group_layout(self) -> Mapping[str, Sequence[tuple[int, Tensor]]]: ...


@dataclass(frozen=True, eq=False)
class Entry:
    """The slices of one parameter along one dim, and the group of each (``N`` = none)."""

    dim: int
    index: Tensor  # int64 on the parameter's device, one group id per position along ``dim``
    view: tuple[int, ...]  # shape that broadcasts a per-slice vector against the parameter
    pre: int  # number of elements before ``dim`` (product of the leading sizes)
    post: int  # and after it

    @property
    def size(self) -> int:
        return self.index.numel()

    def slice_sums(self, t: Tensor) -> Tensor:
        """One sum per slice of ``t`` (shaped like the parameter) along ``dim``; a new tensor."""
        n = self.size
        if self.pre == 1:
            return _row_sums(t.reshape(n, self.post)) if self.post > 1 else t.reshape(n).clone()
        # The outer dims first (a column sum over a long 2-D view), then the short rows that are left.
        cols = _col_sums(t.reshape(self.pre, n * self.post))
        return cols if self.post == 1 else _row_sums(cols.view(n, self.post))

    def stacked_sums(self, t: Tensor) -> Tensor:
        """``slice_sums`` of k tensors at once: ``t`` is ``[k, *parameter shape]`` (contiguous), the
        result ``[k, size]``; one matrix product per reduction whatever k (one sum when small)."""
        k, n = t.shape[0], self.size
        if t.dtype not in BLAS or t.numel() < _SMALL:  # strided sums: fewer calls, and fast enough when small
            t = t.view(k, self.pre, n, self.post)
            return t.sum((1, 3)) if self.pre > 1 or self.post > 1 else t.view(k, n).clone()
        if self.pre == 1:
            return _row_sums(t.view(k * n, self.post)).view(k, n) if self.post > 1 else t.view(k, n).clone()
        cols = torch.matmul(t.new_ones(1, self.pre), t.view(k, self.pre, n * self.post))
        return cols.view(k, n) if self.post == 1 else _row_sums(cols.view(k * n, self.post)).view(k, n)

    def weighted_sums(self, t: Tensor, other: Entry, w: Tensor) -> Tensor:
        """One sum per slice of ``t · w[position along other.dim]``, for ``other`` on another dim.

        Dims 0 and 1 (a conv or linear weight's output and input channels) take one
        matrix-vector product over ``t``; other pairs multiply out first.
        """
        if (self.dim, other.dim) == (0, 1):
            return t.reshape(self.size, -1) @ w.repeat_interleave(other.post)
        if (self.dim, other.dim) == (1, 0):
            return (w @ t.reshape(other.size, -1)).view(self.size, self.post).sum(1)
        return self.slice_sums(t * w.view(other.view))


@dataclass(frozen=True, eq=False)
class ParamPlan:
    """One grouped parameter: its position in the optimizer's parameter list and its entries."""

    position: int
    name: str
    entries: tuple[Entry, ...]

    @functools.cached_property
    def is_vector(self) -> bool:
        """Whether every element is a slice of its own (a bias, a norm weight)."""
        return all(e.pre == 1 and e.post == 1 for e in self.entries)

    @property
    def multi_dim(self) -> bool:
        """Whether its groups run along more than one dim (an element can be in two groups)."""
        return len({e.dim for e in self.entries}) > 1

    def restricted(self, keep: Sequence[bool]) -> ParamPlan | None:
        """The same plan with only the entries where ``keep`` is true (None if none is)."""
        entries = tuple(e for e, k in zip(self.entries, keep) if k)
        return ParamPlan(self.position, self.name, entries) if entries else None


BLOCK = 1 << 16
"""Elements in a block of rows of a weight grouped along two dims: its products (a few blocks'
worth) stay in the CPU cache while they are reduced, so that the whole weight is read once."""


def block_sums(x: Tensor, d: Tensor, post: int, *, with_abs: bool, scratch: Tensor) -> tuple[Tensor, Tensor]:
    """Per-slice sums of x·d, x², d² (and |x|) along dim 0 and dim 1 of a contiguous float32 /
    float64 weight (conv, linear), ``[k, size of dim 0]`` and ``[k, size of dim 1]``; ``post``
    is the number of elements after dim 1. ``x`` and ``d`` are viewed as ``[O, M]`` and taken one
    block of rows at a time; ``scratch`` holds ``k·max(BLOCK, M)`` elements."""
    x, d = x.view(x.shape[0], -1), d.reshape(x.shape[0], -1)
    o, m = x.shape
    k = 4 if with_abs else 3
    per = max(1, BLOCK // m)  # rows per block
    rows = x.new_empty(o, k)
    cols = x.new_zeros(k * m)
    ones_m, ones_o = x.new_ones(m), x.new_ones(per)
    views: dict[int, tuple[tuple[Tensor, ...], Tensor, Tensor, Tensor]] = {}
    for xb, db, rb in zip(x.split(per), d.split(per), rows.view(-1).split(per * k)):
        n = xb.shape[0]
        if n not in views:  # the same views for every full block (the calls cost more than small blocks' math)
            s = scratch[: n * k * m].view(n, k, m)
            views[n] = (s.unbind(1), s.view(n * k, m), s.view(n, k * m).t(), ones_o[:n])
        prods, flat, flat_t, ones = views[n]
        torch.mul(xb, db, out=prods[0])
        torch.mul(xb, xb, out=prods[1])
        torch.mul(db, db, out=prods[2])
        if with_abs:
            torch.abs(xb, out=prods[3])
        torch.mv(flat, ones_m, out=rb)
        cols.addmv_(flat_t, ones)
    return rows.t(), cols.view(k, m) if post == 1 else _row_sums(cols.view(-1, post)).view(k, -1)


def _row_sums(t: Tensor) -> Tensor:
    """``t.sum(1)`` of a 2-D tensor; a matrix-vector product where BLAS has one (faster on CPU)."""
    return torch.mv(t, t.new_ones(t.shape[1])) if t.dtype in BLAS and t.numel() >= _SMALL else t.sum(1)


def _col_sums(t: Tensor) -> Tensor:
    """``t.sum(0)`` of a 2-D tensor, likewise (twice as fast as the strided reduction on CPU)."""
    return torch.mv(t.t(), t.new_ones(t.shape[0])) if t.dtype in BLAS and t.numel() >= _SMALL else t.sum(0)


_SMALL = 1 << 14
"""Below this many elements a reduction's cost is its call: one ``sum`` beats a ones vector and a product."""


BLAS = (torch.float32, torch.float64)
"""The dtypes whose sums are taken by matrix-vector products."""


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
          nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm, nn.LocalResponseNorm)


_NOT_NORMS = ("Normaliz", "WeightNorm", "SpectralNorm")  # reparametrizations and parameter-free layers


def _norm_parameter_ids(model: nn.Module) -> set[int]:
    """The ids of the parameters that normalization layers own directly: torch's own, and the
    classes of other libraries named like one (``LlamaRMSNorm``, ``LayerNorm2d``, ``BatchNormAct2d``:
    an RMSNorm written out in pointwise ops has no normalization op in the graph). A search space's
    ``normalization_params`` (those a normalization op of its graph reads, e.g. ``F.batch_norm`` on a
    module's own parameters) are added to them."""
    out: set[int] = set()
    for m in model.modules():
        name = type(m).__name__
        if isinstance(m, _NORMS) or ("Norm" in name and not any(w in name for w in _NOT_NORMS)):
            out.update(id(p) for p in m.parameters(recurse=False))
    return out


def slice_index(plans: Sequence[ParamPlan]) -> Tensor:
    """The group id of every slice of ``plans``, in the order their per-slice values are concatenated."""
    return torch.cat([e.index for q in plans for e in q.entries])


class SliceTable:
    """Index structures over every entry and slice of a list of plans (the layout's), built once.

    The optimizers restrict the plans again and again to the slices some groups touch (G_r at each
    period start, the period's groups); a supernet has hundreds of plans and thousands of entries.
    With these arrays a restriction is a segment count over all slices (one host read) and one
    cache lookup per touched plan — the restricted plans are kept, keyed by which entries they keep
    — and the restricted plans' slices are one boolean index of ``index``.

    Entries are numbered in plan order (as ``slice_index`` concatenates them); ``index`` is
    ``slice_index(plans)``.
    """

    def __init__(self, plans: Sequence[ParamPlan], index: Tensor) -> None:
        self.plans = tuple(plans)
        self.index = index
        self.entries: tuple[Entry, ...] = tuple(e for q in self.plans for e in q.entries)
        counts = np.array([len(q.entries) for q in self.plans], dtype=np.int64)
        self.plan_first = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(counts)])  # [plans + 1]
        self.entry_plan = np.repeat(np.arange(len(self.plans), dtype=np.int64), counts)  # [entries]
        self.entry_local = np.arange(len(self.entries), dtype=np.int64) - self.plan_first[self.entry_plan]
        sizes = [e.size for e in self.entries]
        self.entry_size = np.array(sizes, dtype=np.int64)
        self.entry_start = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(self.entry_size)])  # [entries + 1]
        dev = index.device
        self._ends = torch.as_tensor(self.entry_start[1:], device=dev)
        self._starts = torch.as_tensor(self.entry_start[:-1], device=dev)
        # the entry of every slice
        self.slice_entry = torch.repeat_interleave(torch.arange(len(self.entries), device=dev),
                                                   torch.as_tensor(self.entry_size, device=dev))
        # a plan's kept entries as the bits of one code (uint64: sums of distinct powers of two; the
        # differences of wrapped cumulative sums are exact); None when a plan has more than 64 entries
        self._bits = (np.left_shift(np.uint64(1), self.entry_local.astype(np.uint64))
                      if not len(counts) or int(counts.max()) <= 64 else None)
        self._restricted: dict[tuple[int, int | bytes], ParamPlan] = {}
        # On the CPU the index is read through numpy: a period start asks these questions a few times,
        # and numpy's gathers and scans over ~10⁵ slices cost a fraction of PyTorch's per-op overhead.
        self._index_np: np.ndarray | None = index.numpy() if dev.type == "cpu" else None

    @property
    def num_entries(self) -> int:
        return len(self.entries)

    def touched(self, groups: Tensor) -> np.ndarray:
        """Per entry: whether one of its slices is in ``groups`` (bool ``[N + 1]``); one host read."""
        if not self.entries:
            return np.zeros(0, dtype=bool)
        if self._index_np is not None and groups.device.type == "cpu":
            hits = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(groups.numpy()[self._index_np])])
            return hits[self.entry_start[1:]] > hits[self.entry_start[:-1]]
        hit = groups[self.index].to(torch.int64)
        count = torch.cat([hit.new_zeros(1), hit.cumsum(0)])  # hits before each slice
        return (count[self._ends] > count[self._starts]).cpu().numpy()

    def slice_mask(self, keep: np.ndarray) -> Tensor:
        """Per slice (bool, on the index's device): whether its entry is kept (``keep``: bool ``[entries]``)."""
        return torch.as_tensor(keep, device=self.index.device)[self.slice_entry]

    def kept_index(self, keep: np.ndarray) -> Tensor:
        """The groups of the slices of the kept entries (``keep``: bool ``[entries]``), in order:
        ``index[slice_mask(keep)]``, i.e. ``slice_index`` of ``restrict(keep)``."""
        if self._index_np is not None:
            return torch.from_numpy(self._index_np[np.repeat(keep, self.entry_size)])
        return self.index[self.slice_mask(keep)]

    def restrict(self, keep: np.ndarray) -> tuple[ParamPlan, ...]:
        """The plans restricted to the entries where ``keep`` (bool ``[entries]``) holds, in order, those
        with none left out — what ``ParamPlan.restricted`` gives plan by plan; a plan that keeps every
        entry is itself."""
        if not self.plans:
            return ()
        if self._bits is not None:
            cs = np.concatenate([np.zeros(1, dtype=np.uint64), np.cumsum(np.where(keep, self._bits, np.uint64(0)))])
            codes = cs[self.plan_first[1:]] - cs[self.plan_first[:-1]]
            hit = np.flatnonzero(codes)
            keys: list[int | bytes] = codes[hit].tolist()
        else:
            cs = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(keep)])
            hit = np.flatnonzero(cs[self.plan_first[1:]] > cs[self.plan_first[:-1]])
            keys = [keep[self.plan_first[i]:self.plan_first[i + 1]].tobytes() for i in hit.tolist()]
        cache = self._restricted
        out: list[ParamPlan] = []
        for i, key in zip(hit.tolist(), keys):
            q = cache.get((i, key))
            if q is None:
                q = cache[(i, key)] = self._restrict_one(i, keep)
            out.append(q)
        return tuple(out)

    def _restrict_one(self, i: int, keep: np.ndarray) -> ParamPlan:
        q = self.plans[i]
        mask = keep[self.plan_first[i]:self.plan_first[i + 1]]
        if bool(mask.all()):
            return q
        r = q.restricted(mask.tolist())
        assert r is not None
        return r


class GroupLayout:
    """The group layout of a search space, resolved against the optimizer's parameter list.

    Built once, when the optimizer is constructed; validates the layout and raises
    ``OtonasError`` naming the parameter and the fix when it does not fit the model.
    """

    def __init__(self, space: SearchSpaceLike, params: Sequence[Tensor]) -> None:
        n = int(space.num_prunable_groups)
        if n < 0:
            raise OtonasError(f"space.num_prunable_groups is {n}; expected a count >= 0")
        self.num_groups = n
        named = dict(space.model.named_parameters(remove_duplicate=False))
        position = {id(p): i for i, p in enumerate(params)}
        raw = space.group_layout()
        # Tied parameters appear under several names; their entries are merged onto one tensor.
        by_param: dict[int, tuple[str, list[tuple[int, Tensor]]]] = {}
        for name, entries in raw.items():
            if name not in named:
                raise OtonasError(
                    f"group_layout() names the parameter {name!r}, which space.model does not have; "
                    "the search space was analysed from a different model: run otonas.analyze on this model")
            p: Tensor = named[name]
            if id(p) not in position:
                raise OtonasError(
                    f"the parameter {name!r} belongs to prunable groups but is not among the optimized "
                    "parameters (requires_grad=False?); DHSPG must be able to zero it: set "
                    f"{name}.requires_grad = True")
            by_param.setdefault(id(p), (name, []))[1].extend(entries)

        first = next(iter(by_param), None)
        device = params[position[first]].device if first is not None else (
            params[0].device if params else torch.device("cpu"))
        plans: list[ParamPlan] = []
        sizes = torch.zeros(n + 1, dtype=torch.float64)
        for pid, (name, entries) in by_param.items():
            p = params[position[pid]]
            if p.device != device:
                raise OtonasError(
                    f"the grouped parameter {name!r} is on {p.device} but others are on {device}; "
                    "DHSPG needs every grouped parameter on one device: move the model with model.to(device)")
            built: list[Entry] = []
            for dim, index in entries:
                dim = int(dim) + p.dim() if int(dim) < 0 else int(dim)
                index = self._check_entry(name, p, dim, index, n)
                view = tuple(p.shape[dim] if k == dim else 1 for k in range(p.dim()))
                idx = torch.where(index < 0, torch.full_like(index, n), index)
                built.append(Entry(int(dim), idx.to(device), view, pre=math.prod(p.shape[:dim]),
                                   post=math.prod(p.shape[dim + 1:])))
                # Elements per group: each slice holds numel / shape[dim] elements.
                sizes.index_add_(0, idx, torch.full((idx.numel(),), p.numel() / max(p.shape[dim], 1),
                                                    dtype=torch.float64))
            plans.append(ParamPlan(position[pid], name, tuple(built)))
        self.plans: tuple[ParamPlan, ...] = tuple(sorted(plans, key=lambda q: q.position))
        self.device = device
        self.slice_index = (slice_index(self.plans) if self.plans
                            else torch.zeros(0, dtype=torch.int64, device=device))
        empty = (sizes[:n] == 0).nonzero().flatten().tolist()
        if empty:
            raise OtonasError(
                f"prunable groups {empty[:10]}{' …' if len(empty) > 10 else ''} have no slice in "
                f"group_layout() although num_prunable_groups is {n}; the search space is inconsistent: "
                "re-run otonas.analyze")
        self.group_size = sizes[:n].to(device)
        # The normalization scales and shifts among the grouped parameters (1-D: one slice per
        # element), for scores that read them (NormAffineScore): positions and their slices' groups.
        norm_ids = _norm_parameter_ids(space.model) | {
            id(named[f]) for f in getattr(space, "normalization_params", ()) if f in named}
        norm: list[tuple[int, Tensor]] = [(q.position, e.index) for q in self.plans for e in q.entries
                                          if id(params[q.position]) in norm_ids and params[q.position].dim() == 1]
        self.norm_positions: tuple[int, ...] = tuple(i for i, _ in norm)
        self.norm_index = (torch.cat([ix for _, ix in norm]) if norm
                           else torch.zeros(0, dtype=torch.int64, device=device))
        counts = torch.zeros(n + 1, dtype=torch.float64, device=device)
        self.norm_size = counts.index_add_(0, self.norm_index, torch.ones_like(self.norm_index, dtype=torch.float64))[:n]

    def norm_sq(self, params: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
        """``[N]``: Σ x² over each group's normalization scales and shifts (zero where it has none)."""
        out = torch.zeros(self.num_groups + 1, dtype=dtype, device=self.device)
        if self.norm_positions:
            x = torch.cat([params[i].detach().reshape(-1) for i in self.norm_positions]).to(dtype)
            out.index_add_(0, self.norm_index, x * x)
        return out[: self.num_groups]

    @staticmethod
    def _check_entry(name: str, p: Tensor, dim: int, index: Tensor, n: int) -> Tensor:
        if not 0 <= dim < p.dim():
            raise OtonasError(f"group_layout() gives dim {dim} for {name!r} of shape {tuple(p.shape)}; "
                              f"expected a dim in [0, {p.dim()})")
        if not isinstance(index, Tensor) or index.dtype.is_floating_point or index.dtype == torch.bool:
            raise OtonasError(f"group_layout() entry ({dim}, …) of {name!r} is not an integer tensor; "
                              "expected int64 group ids (-1 for none)")
        index = index.detach().to("cpu", torch.int64).reshape(-1)
        if index.numel() != p.shape[dim]:
            raise OtonasError(f"group_layout() gives {index.numel()} group ids for dim {dim} of {name!r}, "
                              f"which has size {p.shape[dim]}; expected one id per position")
        if index.numel() and (int(index.min()) < -1 or int(index.max()) >= n):
            raise OtonasError(f"group_layout() entry for dim {dim} of {name!r} holds ids outside [-1, {n}); "
                              f"num_prunable_groups is {n}")
        return index

    def segment_sum(self, values: Tensor, index: Tensor | None = None) -> Tensor:
        """Per-group sums ``[N + 1, k]`` of per-slice values ``[L, k]`` (last row: no group)."""
        index = self.slice_index if index is None else index
        out = torch.zeros(self.num_groups + 1, values.shape[1], dtype=values.dtype, device=values.device)
        return out.index_add_(0, index, values)
