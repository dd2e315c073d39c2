"""``verify``: prove on a given model that analysis + build are exact."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree

from ._errors import UsageError
from ._models import example_inputs, resolve_model
from .analysis import SearchSpace, analyze_captured
from .build import build
from .capture import capture, shorter_inputs, without_cache
from .ops import GQA

__all__ = ["VerifyReport", "verify", "zero_groups_", "prunable_param_share"]

RTOL = 1e-4


@dataclass
class VerifyReport:
    model: str
    groups: int
    prunable_groups: int
    zeroed_groups: int
    families: int
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    max_abs_diff: float
    max_rel_diff: float
    passed: bool
    prunable_param_share: float
    seconds_analyze: float
    seconds_build: float
    pinned: list[dict[str, str]] = field(default_factory=list)
    message: str = ""
    mode: str = "prune"
    export_dir: str = ""
    erasing_groups: int = 0
    erased_operators: list[str] = field(default_factory=list)
    #: the shapes of the first input at which the subnet was compared with the model
    checked_shapes: list[list[int]] = field(default_factory=list)
    #: the pin that keeps the most channel groups, the model's own inputs and outputs aside
    #: (op, node, module, reason, groups); empty when nothing else is pinned
    largest_pin: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def zero_groups_(space: SearchSpace, mask: np.ndarray) -> None:
    """Set every parameter slice of the groups in ``mask`` to zero, in place."""
    params = dict(space.model.named_parameters(remove_duplicate=False))
    sel_groups = torch.from_numpy(np.asarray(mask, dtype=bool))
    with torch.no_grad():
        for fqn, entries in space.group_layout().items():
            p = params[fqn]
            for dim, g in entries:
                hit = (g >= 0) & sel_groups[g.clamp(min=0)]
                if hit.any():
                    p.index_fill_(dim, torch.nonzero(hit).flatten().to(p.device), 0.0)


def prunable_param_share(space: SearchSpace) -> float:
    """Share of the model's parameters that lie in at least one prunable group."""
    params = dict(space.model.named_parameters(remove_duplicate=False))
    total = sum(p.numel() for p in space.model.parameters())
    covered = 0.0
    for fqn, entries in space.group_layout().items():
        p = params[fqn]
        uncovered = 1.0
        for _, g in entries:
            uncovered *= float((g < 0).sum()) / len(g)
        covered += p.numel() * (1.0 - uncovered)
    return covered / total if total else 0.0


def _compare(ref: Any, out: Any) -> tuple[float, float]:
    a, _ = pytree.tree_flatten(ref)
    b, _ = pytree.tree_flatten(out)
    if len(a) != len(b):
        return float("inf"), float("inf")
    max_abs, max_rel = 0.0, 0.0
    for x, y in zip(a, b):
        if not isinstance(x, torch.Tensor):
            continue
        if not isinstance(y, torch.Tensor) or x.shape != y.shape:
            return float("inf"), float("inf")
        if not x.is_floating_point():
            d = float((x != y).any())
            max_abs, max_rel = max(max_abs, d), max(max_rel, d)
            continue
        diff = (x.double() - y.double()).abs().max().item() if x.numel() else 0.0
        scale = x.double().abs().max().item() if x.numel() else 0.0
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else diff)
    return max_abs, max_rel


def verify(
    model: str | nn.Module,
    *,
    input_shapes: list[tuple[int, ...]] | None = None,
    input_dtypes: list[torch.dtype] | None = None,
    model_kwargs: dict[str, Any] | str | None = None,
    fraction: float = 0.3,
    seed: int = 0,
    strict: bool | None = None,
    mode: str = "prune",
    gqa: GQA = "kv",
    export_dir: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Capture, analyze, zero a random ``fraction`` of the prunable groups, build, compare.

    ``mode="erase"`` erases a random valid set of erasing groups instead (about
    ``fraction`` of them, taken in random order and kept only while the network stays
    valid); ``mode="both"`` does both. ``gqa`` is :func:`otonas.analyze`'s (grouped-query
    attention by key/value head or by query-head slot). With ``export_dir`` the verified
    subnet is exported there (``model.py``, ``model.safetensors``, ``architecture.json``).

    Passes when the built network's outputs match the zeroed model's on fresh random
    inputs of another batch size (relative tolerance 1e-4) and it has fewer parameters.
    Parameters that are all zero at initialisation (a zero-initialised classifier) get
    small random values first, so that the comparison can fail.

    ``progress`` is called with a line as each stage starts (capture, analyze, zero, build,
    compare); ``otonas verify`` prints them to stderr, a large model takes a while.
    """
    stage = _Stages(progress)
    if mode not in ("prune", "erase", "both"):
        raise UsageError(f"--mode {mode!r} is not one of prune, erase, both")
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"--fraction {fraction} must lie strictly between 0 and 1, e.g. 0.3")
    if isinstance(model, str):
        resolved = resolve_model(model, kwargs=model_kwargs)
        name, module = model, resolved.model
        shapes = tuple(tuple(s) for s in input_shapes) if input_shapes else resolved.input_shapes
        dtypes = tuple(input_dtypes) if input_dtypes else (resolved.input_dtypes or (torch.float32,) * len(shapes))
    else:
        name, module = type(model).__name__, model
        shapes = tuple(tuple(s) for s in input_shapes or ())
        dtypes = tuple(input_dtypes or (torch.float32,) * len(shapes))
    if not shapes:
        raise UsageError(f"no input shape is known for {name}; pass --input-shape, e.g. --input-shape 2,3,224,224")
    if len(dtypes) < len(shapes):
        dtypes = dtypes + (torch.float32,) * (len(shapes) - len(dtypes))
    module.eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() and not p.any():
                p.normal_(0.0, 0.02)
    capture_batch = max(2, shapes[0][0]) if shapes[0] else 2
    xs = example_inputs(module, shapes, dtypes, batch=capture_batch, seed=seed)
    try:
        with torch.no_grad():
            module(*xs)
    except Exception as err:
        shown = ", ".join(",".join(map(str, x.shape)) for x in xs)
        raise UsageError(f"input shape {shown} does not fit {name}: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}. Fix: pass --input-shape with the shape "
                         "the model expects") from None
    t0 = time.perf_counter()
    stage("capture", f"torch.export of {name}")
    cap = capture(module, xs, strict=strict)
    stage("analyze", "channel flow, families and erasing groups")
    space = analyze_captured(module, cap, gqa=gqa)
    t_analyze = time.perf_counter() - t0
    pinned = [{"op": e.op, "node": e.node, "reason": e.reason, "module": e.module} for e in space.pins]
    full = space.costs()
    n, e = space.num_prunable_groups, space.num_erasing_groups
    rng = np.random.default_rng(seed)
    erased = np.zeros(e, dtype=bool)
    stage("zero", f"random {'groups' if mode == 'prune' else 'operators' if mode == 'erase' else 'groups and operators'}"
          f" ({fraction:.0%})")
    if mode in ("erase", "both"):
        if e == 0:
            return _nothing(name, space, full, pinned, t_analyze, mode,
                            f"{name} has no erasing groups: no add or cat join has an input that is a "
                            "parametrised operator whose output is zero when its parameters are")
        erased = random_valid_erasure(space, fraction, rng)
        params = dict(module.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            for i in np.nonzero(erased)[0]:
                for fqn in space.erasing_groups[i].params:
                    params[fqn].zero_()
    mask = np.zeros(n, dtype=bool)
    if mode in ("prune", "both"):
        if n == 0:
            why = "; ".join(f"{p['reason']} at {p['node']}" for p in pinned[:5]) or "no layer with channels was found"
            return _nothing(name, space, full, pinned, t_analyze, mode, f"nothing in {name} is prunable: {why}")
        mask[rng.choice(n, size=max(1, int(round(fraction * n))), replace=False)] = True
        mask = space.removable(mask)
        zero_groups_(space, mask)
    stage("build", f"the smaller network ({int(mask.sum())} groups zeroed, {int(erased.sum())} operators erased)")
    t1 = time.perf_counter()
    plan = space.plan()  # what build, export and the figures below all take
    subnet = build(space, plan)
    t_build = time.perf_counter() - t1
    test_batch = 3 if capture_batch != 3 else 4
    xt = example_inputs(module, shapes, dtypes, batch=test_batch if space.capture.dynamic_batch else capture_batch,
                        seed=seed + 1)
    stage("compare", "outputs on fresh inputs")
    with torch.no_grad(), without_cache(module):  # compared as captured: a HF model without its cache
        ref = module(*xt)
        out = subnet(*xt)
    max_abs, max_rel = _compare(ref, out)
    checked = [list(xt[0].shape)]
    shorter = shorter_inputs(xt, space.capture.free_dims)
    if shorter is not None:  # a free sequence dim: the subnet must hold at another length too
        with torch.no_grad(), without_cache(module):
            other = _compare(module(*shorter), subnet(*shorter))
        max_abs, max_rel = max(max_abs, other[0]), max(max_rel, other[1])
        checked.append(list(shorter[0].shape))
    if export_dir is not None:
        import sys

        from .export import export

        export(space, export_dir, plan=plan, subnet=subnet, example_inputs=xt, command=" ".join(sys.argv),
               architecture={"options": {"model": name, "fraction": fraction, "seed": seed, "mode": mode,
                                         "input_shapes": [list(s) for s in shapes]}})
    after = plan.after
    params_before = sum(p.numel() for p in module.parameters())
    params_after = sum(p.numel() for p in subnet.parameters()) + (params_before - full.params)
    passed = max_rel <= RTOL and params_after < params_before
    msg = "outputs match and the subnet is smaller" if passed else (
        f"outputs differ (max relative difference {max_rel:.3g} > {RTOL})" if max_rel > RTOL else
        "the subnet is not smaller")
    return VerifyReport(
        name, space.num_groups, n, int(mask.sum()), len(space.families), params_before, params_after, full.flops,
        after.flops, max_abs, max_rel, passed, prunable_param_share(space), t_analyze, t_build, pinned, msg, mode,
        export_dir or "", e,
        [space.erasing_groups[i].module or space.erasing_groups[i].output for i in plan.erased_groups],
        checked, _largest_pin(space))


def _largest_pin(space: SearchSpace) -> dict[str, Any]:
    return next(({"op": e.op, "node": e.node, "module": e.module, "reason": e.reason, "groups": k}
                 for e, k in space.pin_sizes() if e.reason not in ("model input", "model output")), {})


class _Stages:
    """Calls ``progress`` with "[i/5] stage: what (previous stage's seconds)" as a stage starts."""

    NAMES = ("capture", "analyze", "zero", "build", "compare")

    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.progress = progress
        self.last: tuple[str, float] | None = None

    def __call__(self, name: str, what: str) -> None:
        now = time.perf_counter()
        if self.progress is not None:
            took = f" ({self.last[0]} took {now - self.last[1]:.1f}s)" if self.last else ""
            self.progress(f"[{self.NAMES.index(name) + 1}/{len(self.NAMES)}] {name}: {what}{took}")
        self.last = (name, now)


def random_valid_erasure(space: SearchSpace, fraction: float, rng: np.random.Generator,
                         accept: Callable[[np.ndarray], bool] | None = None) -> np.ndarray:
    """About ``fraction`` of the erasing groups, drawn in random order, each kept only if the
    set stays valid (and not already inside an erased group) and, with ``accept``, only if
    ``accept(chosen)`` holds for the set with it (e.g. a FLOPs floor)."""
    e = space.num_erasing_groups
    target = max(1, int(round(fraction * e)))
    chosen = np.zeros(e, dtype=bool)
    for i in rng.permutation(e):
        if chosen.sum() >= target:
            break
        p = space.erasing_groups[i].parent
        while p is not None and not chosen[p]:
            p = space.erasing_groups[p].parent
        if p is not None:
            continue
        chosen[i] = True
        if not space.is_valid(chosen) or (accept is not None and not accept(chosen)):
            chosen[i] = False
    return chosen


def _nothing(name: str, space: SearchSpace, full: Any, pinned: list[dict[str, str]], t_analyze: float, mode: str,
             message: str) -> VerifyReport:
    return VerifyReport(name, space.num_groups, space.num_prunable_groups, 0, len(space.families), full.params,
                        full.params, full.flops, full.flops, 0.0, 0.0, False, 0.0, t_analyze, 0.0, pinned, message,
                        mode, "", space.num_erasing_groups, [], largest_pin=_largest_pin(space))


