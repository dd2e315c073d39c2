"""DHSPG (OTOv2): a base optimizer plus a half-space projection that zeroes exactly K groups.

Per step, with d the base optimizer's direction and α the learning rate:

* warm-up (step < ``start_step``): the base step ``x ← x − α·d`` everywhere;
* at ``start_step``, once: the K most redundant groups become G_r (``RedundancyScore``);
* projection phase (``start_step`` ≤ step < ``end_step``): groups outside G_r take the base
  step; on G_r, ``x̂ = x − α·d − α·λ_g·x_g/‖x_g‖`` with λ_g adapted per group
  (:func:`group_lambdas`) and, by default, lifted to the pace that reaches the half-space boundary
  by ``end_step`` (:func:`schedule_lambdas`), then every G_r group with ``⟨x̂_g, x_g⟩ < ε‖x_g‖²``
  is set to zero; after the last step of the phase every G_r group is zero (forced if need be,
  with a warning — with the scheduled λ only where lr is 0);
* afterwards: the base step, with the zero groups held at zero.

A zero group stays zero: its gradient entries are masked before the base rule sees them,
its momentum / Adam moments are zeroed with it, and only G_r groups are ever projected.

Host-device synchronisation (matters on CUDA): none during steps, except three times in a
run: at ``start_step`` (which parameter slices G_r touches is read back, to visit only those
later; under ``torch.distributed`` G_r is broadcast from rank 0), at the last projection
step (the number of groups that had to be forced to zero) and at the first step after it
(the positions of the zero slices, fixed from then on). ``metrics()`` and
``group_sparsity()`` read values back and so synchronise. On CPU, where a read costs nothing,
every projection step also reads which groups reached zero, so that zero slices are written
one by one instead of masking whole tensors.

Cost: on the CPU a conv or linear weight grouped along its channel dims goes through two
compiled loops (``_kernels``): statistics (with SGD's momentum update) and then the step with
the half-space test's cross terms, one pass each. Elsewhere the statistics are products
reduced per slice by matrix-vector products; a weight larger than ``_layout.BLOCK`` elements
is taken a block of rows at a time, its products reduced while in cache, and its step taken
in a second pass of blocks. Under the progressive schedule with SGD such a weight takes its
whole step — masking, momentum, base step, shrink — in one more loop (``_kernels.sgd_step``).
See ``docs/optim.md`` (Cost) for measured figures.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import ForcedProjectionWarning, OtonasError, UsageError
from . import _kernels
from ._base import SGDRule, make_rule
from ._flat import FlatMomentum
from ._layout import BLAS, BLOCK, Entry, GroupLayout, ParamPlan, SearchSpaceLike, SliceTable, block_sums, slice_index
from ._schedule import SCHEDULES, period_bounds
from ._score import CosineMagnitudeScore, GroupStats, RedundancyScore
from ._select import Selection, Selector, SelectorContext, TopKSelector, _caller_level

__all__ = ["DHSPG", "ForcedProjectionWarning", "group_lambdas", "schedule_lambdas"]

_VARIANTS = ("sgd", "adam", "adamw")
LAMBDA_RULES = ("schedule", "fixed")
"""How the half-space schedule sets λ_g: lifted to the pace that reaches the boundary by
``end_step`` (:func:`schedule_lambdas`), or OTOv2's rule alone (:func:`group_lambdas`)."""


def group_lambdas(dot: Tensor, x_norm: Tensor, d_sq: Tensor, *, lmbda: float, amplify: float,
                  coeff: float) -> Tensor:
    """OTOv2's per-group regularization strength λ_g.

    The G_r step direction is ``d_g + λ_g·x_g/‖x_g‖``. It shrinks ‖x_g‖ when
    ``λ_g > lo = −⟨x_g, d_g⟩/‖x_g‖`` and it is still a descent direction (positive inner
    product with d_g) when ``λ_g < hi = −‖d_g‖²‖x_g‖/⟨x_g, d_g⟩``; ``lo ≤ ‖d_g‖ ≤ hi``. Where
    d_g already shrinks the group (``⟨x_g, d_g⟩ ≥ 0``) λ_g is ``lmbda``; elsewhere it is
    ``clip(amplify·lo, lmbda, coeff·lmbda)``, replaced by the midpoint ``(lo + hi)/2`` when it
    reaches hi. Groups with ``x_norm == 0`` get ``lmbda`` (their value is never used).
    """
    opposed = (dot < 0) & (x_norm > 0)
    safe_dot = torch.where(opposed, dot, -torch.ones_like(dot))
    safe_norm = torch.where(opposed, x_norm, torch.ones_like(x_norm))
    lo = -safe_dot / safe_norm
    hi = d_sq / lo  # = ‖d‖²‖x‖/(−⟨x, d⟩), one division: ‖d‖²·‖x‖ can underflow to 0 where hi is not small
    lam = (amplify * lo).clamp(lmbda, coeff * lmbda)
    lam = torch.where(lam >= hi, (lo + hi) / 2, lam)
    return torch.where(opposed, lam, torch.full_like(lam, lmbda))


def schedule_lambdas(lam: Tensor, dot: Tensor, x_norm: Tensor, *, lr: float, steps_left: int, gain: float,
                     epsilon: float) -> Tensor:
    """λ_g lifted so that every live G_r group crosses the half-space boundary by ``end_step``.

    The step moves x_g along −x_g/‖x_g‖ by ``lr·(⟨d_g, x_g⟩/‖x_g‖ + λ_g)`` (the λ term is applied
    outside the base rule, so d_g is the base rule's actual direction, momentum and Adam's
    scaling included), and the half-space test zeroes the group once that reaches
    ``(1 − ε)·‖x_g‖``. With R = ``steps_left`` (counting this one), λ_g is at least
    ``need = gain·(1 − ε)·‖x_g‖/(lr·R) − ⟨d_g, x_g⟩/‖x_g‖``: a loss direction that holds the
    group up is cancelled along x_g (never across it), and the group's norm along its own
    direction shrinks by a share gain/R of itself per step, about (R/R₀)^gain of it left, so
    that with ``gain > 1`` the test fires at the latest at the last step (gain/1 > 1), on a group
    already small. The net move along x_g is bounded by ``gain·‖x_g‖/R``, so no cap is needed.
    ``lam`` (OTOv2's λ_g) is kept where it is larger; with ``lr == 0`` nothing moves and ``lam``
    is returned.
    """
    if lr <= 0:
        return lam
    live = x_norm > 0
    safe = torch.where(live, x_norm, torch.ones_like(x_norm))
    need = gain * (1.0 - epsilon) * x_norm / (lr * max(int(steps_left), 1)) - dot / safe
    return torch.where(live, torch.maximum(lam, need), lam)


def space_over(space: Any, model: nn.Module, *, owner: str) -> Any:
    """``space`` seen over ``model``, a network of the analysed architecture with parameters of its
    own (a deep copy, one rebuilt from a checkpoint, the real model of a space analysed on the meta
    device): everything is the space's but ``.model``. A model whose parameters are not the
    analysed one's (names and shapes) is refused, naming the first difference."""
    if model is getattr(space, "model", None):
        return space
    check = getattr(space, "weights_of", None)
    try:
        if check is not None:
            check(model)
        else:
            mine = {n: tuple(p.shape) for n, p in space.model.named_parameters(remove_duplicate=False)}
            theirs = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
            if mine != theirs:
                diff = sorted(set(mine) ^ set(theirs)) or [n for n in mine if mine[n] != theirs[n]]
                raise UsageError(f"model= is not the analysed architecture: its parameters differ from the "
                                 f"analysed model's (first: {diff[0]!r}); pass a network of the same "
                                 "architecture, or analyze this one")
    except OtonasError as e:
        raise type(e)(f"{owner}: {e}") from None
    return _SpaceOver(space, model)


class _SpaceOver:
    """A search space whose ``.model`` is another network of the same architecture (see space_over)."""

    def __init__(self, space: Any, model: nn.Module) -> None:
        self.__dict__.update(_space=space, model=model)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_space"], name)


DEFAULT_LMBDA = 2.0
"""The base λ of both optimizers (``DHSPG``, ``H2SPG``) and of ``otonas search`` / ``tune``: the
smallest λ_g of the half-space schedule. It matters little under the default scheduled λ rule
(λ_g is lifted to the pace that reaches the boundary by ``end_step``): at 1e-3, 2 and 10 no group
was forced and accuracy was level, in both optimizers (bench/README "One default λ?"); with
``lambda_rule="fixed"`` it sets the pace alone. The progressive schedule does not use it."""


class DHSPG(torch.optim.Optimizer):
    """Dual Half-Space Projected Gradient: trains and drives exactly K prunable groups to zero.

    ``space`` is the ``SearchSpace`` from ``otonas.analyze``; the optimizer updates every
    parameter of ``space.model`` that requires grad (of ``model``, when given: another network of
    the analysed architecture, such as a deep copy). Use it like any optimizer::

        opt = DHSPG(space, lr=0.1, target_group_sparsity=0.5, warmup_steps=1000, end_step=3000)
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()

    After ``end_step`` steps exactly ``K = round(N · target_group_sparsity)`` of the N prunable
    groups are zero and stay zero. ``target_group_sparsity`` may instead map stage names
    (``otonas.analysis.group_stages``; ``"*"`` for the rest) to fractions: then exactly
    round(n_s · target_s) groups of each stage s. See ``docs/optim.md`` for every option.
    """

    def __init__(
        self,
        space: SearchSpaceLike,
        *,
        lr: float,
        target_group_sparsity: float | Mapping[str, float] | None = None,
        warmup_steps: int | None = None,
        end_step: int | None = None,
        variant: str = "sgd",
        momentum: float = 0.9,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        lmbda: float = DEFAULT_LMBDA,
        lmbda_amplify: float = 1.1,
        hat_lmbda_coeff: float = 10.0,
        epsilon: float = 0.0,
        lambda_rule: str = "schedule",
        lambda_gain: float = 1.5,
        score: RedundancyScore | None = None,
        selector: Selector | None = None,
        keep_one_per_family: bool = True,
        process_group: Any = None,
        schedule: str = "progressive",
        periods: int = 5,
        target_flops: float | None = None,
        target_params: float | None = None,
        round_to: int = 1,
        target_latency: float | None = None,
        latency_model: Any = None,
        start_step: int | None = None,
        model: nn.Module | None = None,
    ) -> None:
        name = type(self).__name__
        if model is not None:
            space = space_over(space, model, owner=name)
        if start_step is not None:
            if warmup_steps is not None:
                raise OtonasError(f"{name}: give warmup_steps only; start_step is its deprecated name, and both "
                                  f"were given (warmup_steps={warmup_steps!r}, start_step={start_step!r})")
            warnings.warn(f"{name}: start_step is deprecated; pass warmup_steps={start_step!r} instead (the same "
                          "number: base steps before the projection phase)", DeprecationWarning, stacklevel=2)
            warmup_steps, start_name = start_step, "start_step"
        else:
            start_name = "warmup_steps"
        if warmup_steps is None:
            raise OtonasError(f"{name}: give warmup_steps, the number of plain base steps before the projection "
                              "phase starts")
        start_step = int(warmup_steps)
        if selector is None:
            selector = TopKSelector(target_group_sparsity=target_group_sparsity, target_flops=target_flops,
                                    target_params=target_params, target_latency=target_latency,
                                    latency_model=latency_model, keep_one_per_family=keep_one_per_family,
                                    round_to=round_to)
            target: float | dict[str, float] | None = selector.target_group_sparsity
        else:
            given = [k for k, v in (("target_group_sparsity", target_group_sparsity), ("target_flops", target_flops),
                                    ("target_params", target_params), ("target_latency", target_latency),
                                    ("latency_model", latency_model)) if v is not None]
            given += ["round_to"] if round_to != 1 else []
            if given:
                raise OtonasError(f"{name}: with selector= the budget is the selector's; give {', '.join(given)} to "
                                  "the selector (TopKSelector takes them), not to the optimizer")
            target = None
        end_step = 2 * start_step + 1 if end_step is None else int(end_step)
        if schedule not in SCHEDULES:
            raise OtonasError(f"{name}: schedule={schedule!r} is invalid; expected one of "
                              + ", ".join(repr(v) for v in SCHEDULES))
        if not (isinstance(periods, int) and periods >= 1):
            raise OtonasError(f"{name}: periods={periods!r} is invalid; expected an int >= 1")
        if lambda_rule not in LAMBDA_RULES:
            raise OtonasError(f"{name}: lambda_rule={lambda_rule!r} is invalid; expected one of "
                              + ", ".join(repr(v) for v in LAMBDA_RULES))
        if not (isinstance(lambda_gain, (int, float)) and lambda_gain > 1):
            raise OtonasError(f"{name}: lambda_gain={lambda_gain!r} is invalid; expected a float > 1 (at the last "
                              "projection step the λ step must overshoot the half-space boundary)")
        _validate(owner=name, lr=lr, start=start_step, start_name=start_name, end=end_step, variant=variant,
                  momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay,
                  betas=betas, eps=eps, lmbda=lmbda, amplify=lmbda_amplify, coeff=hat_lmbda_coeff,
                  epsilon=epsilon)
        params = [p for p in space.model.parameters() if p.requires_grad]
        if not params:
            raise OtonasError(f"{name}: the model has no parameter with requires_grad=True; there is nothing to "
                              "optimize")
        # "start_step" stays the key of param_groups (and so of saved state dicts) for warmup_steps.
        defaults = dict(lr=lr, variant=variant, momentum=momentum, dampening=dampening, nesterov=nesterov,
                        weight_decay=weight_decay, betas=tuple(betas), eps=eps, lmbda=lmbda,
                        lmbda_amplify=lmbda_amplify, hat_lmbda_coeff=hat_lmbda_coeff, epsilon=epsilon,
                        lambda_rule=lambda_rule, lambda_gain=float(lambda_gain),
                        target_group_sparsity=target,
                        start_step=start_step,
                        end_step=end_step, schedule=schedule, periods=int(periods), target_flops=target_flops,
                        target_params=target_params, round_to=round_to, target_latency=target_latency)
        super().__init__(params, defaults)
        self._selector = selector
        self._num_prunable = int(space.num_prunable_groups)  # the space's groups; a selector's extra ones follow
        self._layout = GroupLayout(selector.layout(space), params)
        # Index structures over the layout's entries and slices, built when first needed (_table,
        # _static_entries), and the period's memberships (_membership_views).
        self._slice_table: SliceTable | None = None
        self._static: _StaticEntries | None = None
        self._memberships: tuple[list[torch.dtype], dict[torch.dtype, Tensor], list[Tensor]] | None = None
        self._masks: _MaskTable | None = None  # see _mask_table
        # per active entry: its plan number and itself, where its slices end and start (see _locate)
        self._entry_owners: tuple[tuple[ParamPlan, ...], list[tuple[int, Entry]], Tensor, Tensor] | None = None
        self._rule = make_rule(variant)
        self._score = score or CosineMagnitudeScore()
        self._process_group = process_group
        self.num_groups = self._layout.num_groups
        selector.bind(SelectorContext(space=space, num_groups=self.num_groups, device=self._layout.device,
                                      score=self._score, schedule=schedule, periods=int(periods),
                                      broadcast=self._broadcast_tensor))
        # On CPU reading a value back costs nothing: zero slices are then written one by one
        # instead of masking whole tensors (elsewhere a read would stall the device).
        self._host_reads = self._layout.device.type == "cpu"
        self._reset_run_state()

    # ------------------------------------------------------------------ bookkeeping
    def _reset_run_state(self) -> None:
        dev = self._layout.device
        n = self.num_groups
        self._step = 0
        self._redundant: Tensor | None = None  # bool [N + 1]; the last bin (no group) is False
        self._zero = torch.zeros(n + 1, dtype=torch.bool, device=dev)  # G_r groups projected so far
        self._lambdas = torch.zeros(n, device=dev)
        self._redundant_norm = torch.full((), math.nan, device=dev)
        self._forced: int | None = None
        self._active: tuple[ParamPlan, ...] = ()  # the grouped parameters, restricted to slices of G_r
        self._active_index = torch.zeros(0, dtype=torch.int64, device=dev)
        # per active plan: its entries by dim; per active slice: its dim's groups (see _by_dim)
        self._active_dims: tuple[tuple[_Dim, ...], ...] | None = ()
        self._dim_index = torch.zeros(0, 1, dtype=torch.int64, device=dev)
        self._zero_slices: list[tuple[int, Entry, Tensor]] | None = None
        self._buffers: dict[Any, Tensor] = {}  # scratch and x² buffers of the projection phase
        self._fused: dict[int, Tensor] = {}  # this step: momentum buffers _stats updates (see _fusable)
        # The progressive schedule: the groups selected at the start of the current period (bool
        # [N + 1]; None between periods) and the parameter slices they touch.
        self._shrinking: Tensor | None = None
        self._shrink_plans: tuple[ParamPlan, ...] = ()
        self._shrink_index = torch.zeros(0, dtype=torch.int64, device=dev)
        self._shrink_lists: list[tuple[list[Tensor], list[Tensor]]] = []
        self._shrink_indexed: list[tuple[Tensor, int, Tensor]] = []
        self._period = -1
        self._zero_touch: tuple[Tensor, np.ndarray] | None = None  # see _zero_touched
        # The weights whose whole step is one fused loop (``_kernels.sgd_step``), by position: their
        # live rows and columns and how many of the period's groups hold each (see ``_sgd_masks``).
        self._sgd_plans: dict[int, _SGDMasks] | None = None
        self._sgd_calls: dict[int, _kernels.SGDCall] = {}  # by position: see _sgd_call
        self._norm_plans: tuple[Sequence[ParamPlan], Tensor, frozenset[int]] | None = None  # _weights_only_plans
        self._alive: tuple[tuple[Tensor, tuple[ParamPlan, ...]], dict[int, tuple[Tensor, Tensor]]] | None = None
        self._packings: dict[int, tuple[Sequence[ParamPlan], _Packing]] = {}  # see _packing
        self._flat: FlatMomentum | Literal[False] | None = None  # see _flat_momentum (False: none to pack)
        self._blocked: dict[int, tuple[Sequence[ParamPlan], list[int]]] = {}  # see _fusable
        # The weights' own sums, taken by the fused loop of the step before a weights-only score's
        # period start: (the step they are for, {position: (version, data_ptr, (rows, cols))}).
        self._presums: tuple[int, dict[int, tuple[int, int, tuple[Tensor, Tensor]]]] | None = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.param_groups:
            raise OtonasError("DHSPG keeps all parameters in one group (its group statistics span parameters); "
                              "add_param_group is not supported: change options through param_groups[0]")
        super().add_param_group(param_group)

    @property
    def step_count(self) -> int:
        """Steps taken so far."""
        return self._step

    @property
    def redundant_groups(self) -> Tensor | None:
        """Bool mask ``[N]`` of the prunable groups selected for zero (None before the first selection)."""
        return None if self._redundant is None else self._redundant[: self._num_prunable].clone()

    @property
    def selector(self) -> Selector:
        """The strategy that chooses the groups (``selector=``; :class:`TopKSelector` by default)."""
        return self._selector

    @property
    def target_zero_groups(self) -> int:
        """How many groups the selection aims at (the selector's count)."""
        return self._selector.target_zero_groups

    @property
    def kept_fraction(self) -> float | None:
        """With a cost budget: the fraction of the FLOPs / parameters / latency the quotas keep."""
        return getattr(self._selector, "kept_fraction", None)

    @property
    def latency_model(self) -> Any:
        """With ``target_latency``: the estimate the quotas were bisected on."""
        return getattr(self._selector, "latency_model", None)

    @property
    def round_to(self) -> int:
        """Every family keeps a multiple of ``round_to`` channels (or all of them)."""
        return int(getattr(self._selector, "round_to", 1))

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        hp = self.param_groups[0]
        params: list[Tensor] = hp["params"]
        t = self._step
        start, end = hp["start_step"], hp["end_step"]
        progressive = hp["schedule"] == "progressive"
        starting = self._period_starting(hp, t)
        if starting is not None and not self._selector.needs_direction:
            # A selection that reads only the weights is made before the step, on the same
            # weights a selection after the directions would read; the step is then a plain
            # step of the period (one fused pass where the loops take the weight). No
            # statistics loop updates a momentum here: last step's fused set does not apply.
            self._fused = {}
            self._select_period(params, params, *starting, with_direction=False)
        # Weights whose masking, base step and shrink are one loop this step (and their factor).
        fused_sgd, factor = self._sgd_fusable(params, hp, t)
        # In the projection phase, the momentum of some weights is updated inside the loop that
        # takes their statistics (``_kernels.stats``); the base rule does the rest.
        # So are those of every weight at a step that takes the statistics of all groups once: a
        # period start and (H2SPG) a warm-up step. (The half-space partition takes them twice.)
        if self._redundant is not None and start <= t < end and not progressive:
            self._fused = self._fusable(params, hp, self._active)
        elif self._selects_now(hp, t) or (t < start and self._selector.observes_warmup):
            self._fused = self._fusable(params, hp, self._layout.plans)
        else:
            self._fused = {}
        # The many small weights: their masking and momentum step on one flat buffer (_flat).
        flat = self._flat_momentum(params, hp)
        if flat is not None and (flat.members & self._fused.keys() or flat.members & fused_sgd.keys()):
            flat = None
        # Not masked here: the weights of a fused loop (sgd_step, or _stats's momentum update, which
        # masks in the loop) and the flat buffer's (masked as they are packed).
        in_loops = fused_sgd.keys() | self._fused.keys()
        if self._redundant is not None:
            self._mask_grads(params, static=t >= end, skip=in_loops | flat.members if flat is not None else in_loops)
        flat_d = None
        if flat is not None:
            flat_d = flat.directions(params, [self.state[params[i]] for i in flat.positions], hp,
                                     self._zero if self._redundant is not None else None, self._step)
            if flat_d is None:  # buffers it cannot take over: the per-tensor step, masking included
                if self._redundant is not None:
                    self._mask_grads(params, static=t >= end, skip=in_loops)
                flat = None
        skip = flat.members if flat is not None else frozenset()
        with_grad = [i for i, p in enumerate(params)
                     if p.grad is not None and i not in self._fused and i not in fused_sgd and i not in skip]
        grads = [g for i in with_grad if (g := params[i].grad) is not None]  # all of them
        dirs = self._rule.directions([params[i] for i in with_grad], grads, [self.state[params[i]] for i in with_grad],
                                     hp)
        d: list[Tensor | None] = [None] * len(params)
        for i, di in zip(with_grad, dirs):
            d[i] = di
        if flat is not None and flat_d is not None:
            for i, di in zip(flat.positions, flat_d):
                d[i] = di
        for i, buf in self._fused.items():
            d[i] = buf  # updated by _stats before anything reads it
        # Before the period start of a score that reads only the weights, the fused loops also sum
        # the weights they write (in cache): that selection then reads no weight of theirs again.
        presum = bool(fused_sgd) and not self._selector.needs_direction and self._period_starting(hp, t + 1) is not None
        # (only the weights that selection reads: not those of normalized groups, for a score that reads their γ, β)
        summed = self._weights_only_plans()[2] if presum and self._reads_norm_slices_only else None
        presums: dict[int, tuple[int, int, tuple[Tensor, Tensor]]] = {}
        for i, masks in fused_sgd.items():
            x = params[i]
            assert x.grad is not None
            sums = self._sgd_call(i, x, self.state[x]["momentum_buffer"], masks)(
                x.grad, factor, momentum=hp["momentum"], dampening=hp["dampening"],
                weight_decay=hp["weight_decay"], lr=hp["lr"],
                post=math.prod(x.shape[2:]) if presum and (summed is None or i in summed) else None)
            if sums is not None:
                presums[i] = (x._version, x.data_ptr(), sums)
        self._presums = (t + 1, presums) if presums else None
        if t < start:
            if self._selector.observes_warmup:
                self._selector.observe(self._selection_stats(params, d, packed=True))
        elif self._redundant is None and not progressive:
            self._partition(params, d)
        if start <= t < end and progressive:
            self._progressive_step(params, d, hp, t, fused=fused_sgd)
        elif start <= t < end:
            self._hybrid_step(params, d, hp, last=t == end - 1)
        else:
            self._plain_step(params, d, hp["lr"], skip=frozenset())
        self._step += 1
        return loss

    def _fusable(self, params: Sequence[Tensor], hp: dict[str, Any], plans: Sequence[ParamPlan]) -> dict[int, Tensor]:
        """The weights whose SGD momentum ``_stats`` updates in its loop, by position, with their
        buffers: weights taken in two passes (:func:`_in_blocks`) through ``_kernels`` with a
        gradient and a momentum buffer, when the base rule is SGD with momentum and no Nesterov
        (the buffer is then the direction). Same arithmetic as ``SGDRule``, in one pass."""
        if not isinstance(self._rule, SGDRule) or hp["momentum"] == 0 or hp["nesterov"]:
            return {}
        key = id(plans)
        cached = self._blocked.get(key)
        if cached is None or cached[0] is not plans:  # which weights are taken in blocks does not change
            cached = self._blocked[key] = (plans, [q.position for q in plans if _in_blocks(q, params[q.position])])
        out: dict[int, Tensor] = {}
        for pos in cached[1]:
            x = params[pos]
            buf = self.state[x].get("momentum_buffer")
            if buf is not None and x.grad is not None and _kernels.usable(x, x.grad, buf):
                out[pos] = buf
        return out

    def _plain_step(self, params: Sequence[Tensor], d: Sequence[Tensor | None], lr: float,
                    skip: frozenset[int]) -> None:
        idx = [i for i, di in enumerate(d) if di is not None and i not in skip]
        if idx:
            torch._foreach_add_([params[i] for i in idx], [d[i] for i in idx], alpha=-lr)  # type: ignore[misc]

    def _flat_momentum(self, params: Sequence[Tensor], hp: dict[str, Any]) -> FlatMomentum | None:
        """The small weights whose SGD step this is goes through one flat buffer (:mod:`._flat`): with
        SGD's momentum (no Nesterov), the weights under ``_PACK_MAX`` elements of the first such
        weight's dtype and device, when every one has a gradient; None otherwise."""
        if not isinstance(self._rule, SGDRule) or hp["momentum"] == 0 or hp["nesterov"]:
            return None
        if self._flat is None:
            small = [i for i, x in enumerate(params) if x.numel() < _PACK_MAX]
            if small:
                first = params[small[0]]
                small = [i for i in small if params[i].dtype == first.dtype and params[i].device == first.device]
            self._flat = FlatMomentum(small, params, self._layout.plans) if len(small) > 1 else False
        if self._flat is False or not self._flat.usable(params):
            return None
        return self._flat

    def _mask_grads(self, params: Sequence[Tensor], *, static: bool, skip: Container[int]) -> None:
        """Zero the gradient entries of zero groups, so that no base rule can move them (not those
        of the weights in ``skip``, whose fused loop leaves the zero groups alone)."""
        if all(q.position in skip for q in self._active):  # ResNet-50 at a period start: nothing left to mask
            return
        self._zero_slices_of(self._zero, [[None if q.position in skip else params[q.position].grad]
                                          for q in self._active],
                             host=static or self._host_reads, cached=True)

    def _sgd_fusable(self, params: Sequence[Tensor], hp: dict[str, Any], t: int) -> tuple[dict[int, _SGDMasks], float]:
        """The weights whose step this is is one call of ``_kernels.sgd_step`` (gradient masking, SGD's
        momentum step, the progressive shrink), by position, and the shrink factor. Only once G_r is
        known, outside the half-space projection and the period starts (whose scores need the
        directions before the step), with SGD (momentum, no Nesterov), for the weights that have a
        gradient and a momentum buffer (:meth:`_sgd_masks`)."""
        if self._redundant is None:
            return {}, 1.0
        start, end = hp["start_step"], hp["end_step"]
        factor = 1.0
        if start <= t < end:
            if hp["schedule"] != "progressive" or self._selects_now(hp, t):
                return {}, 1.0
            bounds = period_bounds(start, end, hp["periods"])
            p = max(i for i in range(len(bounds) - 1) if bounds[i] <= t)
            if self._shrinking is not None:
                r = bounds[p + 1] - t
                factor = (r - 1) / r
        if not _sgd_rule_ok(self._rule, hp):
            return {}, 1.0
        out: dict[int, _SGDMasks] = {}
        for pos, masks in self._sgd_masks().items():
            x = params[pos]
            buf = self.state[x].get("momentum_buffer")
            if x.grad is not None and buf is not None and _kernels.usable(x, x.grad, buf):
                out[pos] = masks
        return out, factor

    def _selects_now(self, hp: dict[str, Any], t: int) -> bool:
        """Whether step ``t`` starts a period of the progressive schedule (and selects its groups)."""
        return self._period_starting(hp, t) is not None

    def _period_starting(self, hp: dict[str, Any], t: int) -> tuple[int, int] | None:
        """The period step ``t`` starts and how many there are, if it starts one not selected yet."""
        start, end = hp["start_step"], hp["end_step"]
        if hp["schedule"] != "progressive" or not start <= t < end:
            return None
        bounds = period_bounds(start, end, hp["periods"])
        p = max(i for i in range(len(bounds) - 1) if bounds[i] <= t)
        return (p, len(bounds) - 1) if t == bounds[p] and self._period != p else None

    def _sgd_call(self, pos: int, x: Tensor, buf: Tensor, masks: _SGDMasks) -> _kernels.SGDCall:
        """The prepared fused step of weight ``pos`` (:class:`_kernels.SGDCall`), kept while its
        masks, its weight's and buffer's storage and the thread count are."""
        call = self._sgd_calls.get(pos)
        if call is None or not call.fits(x, buf):
            call = self._sgd_calls[pos] = _kernels.SGDCall(x, buf, *masks)
        elif any(a is not b for a, b in zip(call.masks, masks)):
            call.set_masks(*masks)
        return call

    def _sgd_masks(self) -> dict[int, _SGDMasks]:
        """For every active weight the fused loop can take (:func:`_sgd_candidate`): its live rows and
        columns (no zero group) and how many of the period's groups hold each row and column. Kept
        until G_r, the zero set or the period's groups change."""
        if self._sgd_plans is not None:
            return self._sgd_plans
        masks = self._alive_masks()
        out: dict[int, _SGDMasks] = {}
        if masks:
            table = self._mask_table()
            if self._shrinking is not None:  # one gather over every row and column of the weights
                counts = table.gather(self._shrinking.to(torch.int64), 0, "sum").split(table.lengths)
            else:
                counts = torch.zeros(sum(table.lengths), dtype=torch.int64,
                                     device=self._layout.device).split(table.lengths)
            for pos, (row_alive, col_alive) in masks.items():
                k = table.slot[pos]
                out[pos] = (row_alive, counts[2 * k], col_alive, counts[2 * k + 1])
        self._sgd_plans = out
        return out

    def _alive_masks(self) -> dict[int, tuple[Tensor, Tensor]]:
        """The live rows and columns (no zero group) of every active weight the fused loops can
        take, as :meth:`_sgd_masks` gives them; kept while G_r and the zero set are (the period's
        groups change nothing here: a period start's statistics loop reads them before the
        selection, the step after it)."""
        key = (self._zero, self._active)
        if self._alive is not None and self._alive[0][0] is key[0] and self._alive[0][1] is key[1]:
            return self._alive[1]
        params = self.param_groups[0]["params"]
        out: dict[int, tuple[Tensor, Tensor]] = {}
        if isinstance(self._rule, SGDRule):
            table = self._mask_table()
            take = [q.position for q in self._active
                    if q.position in table.slot and _sgd_candidate(q, params[q.position])]
            if take:
                alive = (~table.gather(self._zero, False, "any")).split(table.lengths)
                for pos in take:
                    k = table.slot[pos]
                    out[pos] = (alive[2 * k], alive[2 * k + 1])
        self._alive = (key, out)
        return out

    def _mask_table(self) -> _MaskTable:
        """The groups of every row and column of the weights large enough for the fused loops, over
        the layout's plans (:class:`_MaskTable`); built once (shapes and layout do not change). An
        active plan keeps whole entries of its weight's plan, and the entries it leaves out touch
        neither G_r nor the zero set, so the masks read from all of them are the active ones'."""
        if self._masks is None:
            params = self.param_groups[0]["params"]
            cols: list[list[Tensor]] = []
            lengths: list[int] = []
            slot: dict[int, int] = {}
            for q in self._layout.plans:
                x = params[q.position]
                if x.dim() < 2 or x.numel() < _kernels.MIN_NUMEL or q.position in slot:
                    continue
                slot[q.position] = len(slot)
                for dim, n in ((0, x.shape[0]), (1, x[0].numel())):  # per column of the [O, M] view: its channel's
                    cols.append([e.index if dim == 0 else e.index.repeat_interleave(e.post)
                                 for e in q.entries if e.dim == dim])
                    lengths.append(n)
            depth = max([1] + [len(c) for c in cols])
            pad = self.num_groups + 1  # read as "no group" whatever the mask says of the last bin
            index = torch.full((depth, sum(lengths)), pad, dtype=torch.int64, device=self._layout.device)
            at = 0
            for c, n in zip(cols, lengths):
                for r, t in enumerate(c):
                    index[r, at:at + n] = t
                at += n
            self._masks = _MaskTable(index=index, lengths=lengths, slot=slot)
        return self._masks

    def _zero_slices_of(self, groups: Tensor, tensors: Sequence[Sequence[Tensor | None]], *, host: bool,
                        cached: bool = False) -> None:
        """Zero, in ``tensors[i]`` (tensors shaped like the parameter of active plan ``i``), every
        slice whose group is in ``groups`` (bool ``[N + 1]``).

        ``host``: read ``groups`` back and touch only the slices in it (free on CPU, one sync
        elsewhere); else multiply by per-slice 0/1 vectors, which reads nothing back. ``cached``
        (with ``host``): ``groups`` is the zero set, whose slices are kept until it changes."""
        if host:
            found = self._zero_slices if cached else None
            if found is None:
                found = self._locate(groups)
                if cached:
                    self._zero_slices = found
            for i, e, where in found:
                for t in tensors[i]:
                    if t is not None:
                        _fill_zero(t, e, where)
            return
        alive = self._per_slice((~groups).to(self._acc_dtype))
        for ts, q, vecs in zip(tensors, self._active, alive):
            for t in ts:
                if t is not None:
                    for e, a in zip(q.entries, vecs):
                        t.mul_(a.view(e.view))

    def _locate(self, groups: Tensor) -> list[tuple[int, Entry, Tensor]]:
        """For every active entry with slices in ``groups``: (plan number, entry, where), where is
        the slices' positions when writing only them is cheap (leading dim, or few slices), else a
        0/1 vector repeated over each slice's contiguous block. One host read."""
        if self._entry_owners is None or self._entry_owners[0] is not self._active:  # once per active set
            owners = [(i, e) for i, q in enumerate(self._active) for e in q.entries]
            sizes = self._table.entry_size[self._active_entries]
            ends_np = np.cumsum(sizes)
            self._entry_owners = (self._active, owners, torch.from_numpy(ends_np), torch.from_numpy(ends_np - sizes))
        _, entries, ends, starts = self._entry_owners
        if not entries:
            return []
        # one nonzero over all active slices, split by entry (not a call per entry: a supernet has thousands)
        where = groups[self._active_index].cpu().nonzero().flatten()
        owner = torch.searchsorted(ends, where, right=True)
        counts = torch.bincount(owner, minlength=len(entries))
        hit = counts.nonzero().flatten()
        parts = (where - starts[owner]).split(counts[hit].tolist())  # where is sorted: by entry
        out: list[tuple[int, Entry, Tensor]] = []
        for k, zero in zip(hit.tolist(), parts):
            i, e = entries[k]
            if e.pre == 1 or 8 * zero.numel() <= e.size:
                out.append((i, e, zero.to(e.index.device)))
            else:
                alive = torch.ones(e.size, device=e.index.device)
                out.append((i, e, alive.index_fill_(0, zero.to(alive.device), 0).repeat_interleave(e.post)))
        return out

    def _per_slice(self, per_group: Tensor) -> list[list[Tensor]]:
        """``per_group[N + 1]`` read at every slice of the active plans: one vector per entry."""
        flat = per_group[self._active_index]
        sizes = [e.size for q in self._active for e in q.entries]
        parts = iter(flat.split(sizes))
        dtypes = [self.param_groups[0]["params"][q.position].dtype for q in self._active]
        return [[next(parts).to(dt) for _ in q.entries] for q, dt in zip(self._active, dtypes)]

    def _shrink(self, x: Tensor, dims: Sequence[_Dim], u: Tensor, v: Tensor) -> Tensor:
        """The factor of the λ term on ``x``, broadcastable against it: ``1 − lr · Σ coef`` over each
        element's groups (``u = 1 − lr·c`` and ``v = −lr·c`` per active slice, ``c`` the sum of
        the coefficients on the slice's dim), which shrinks every G_r group by ``lr·λ_g/‖x_g‖``."""
        first, *others = dims
        factor = first.of(u).to(x.dtype).view(first.entry.view)
        if not others:
            return factor
        if len(others) == 1 and first.entry.dim == 0 and others[0].entry.dim == 1:
            # An output × input channel grid (conv / linear weight): one full-size pass; the input
            # channels' terms are spread over their kernel elements, so that the factor broadcasts
            # along whole rows only (a short inner broadcast is several times slower).
            cols = others[0].of(v).to(x.dtype).repeat_interleave(others[0].entry.post)
            out = self._scratch("factor", x.dtype, (first.entry.size, cols.numel()))
            return torch.add(factor.view(-1, 1), cols, out=out).view(x.shape)
        for b in others:
            factor = factor + b.of(v).to(x.dtype).view(b.entry.view)
        return factor

    # ------------------------------------------------------------------ statistics
    @property
    def _acc_dtype(self) -> torch.dtype:
        params = self.param_groups[0]["params"]
        return torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32

    def _scratch(self, name: str, dtype: torch.dtype, shape: Sequence[int]) -> Tensor:
        """A contiguous tensor of ``shape`` from the flat scratch buffer ``name`` (as large as the
        largest grouped parameter), reused by every parameter: its content lasts until the next
        call with the same name. Freed at the end of the projection phase."""
        numel = math.prod(shape)
        flat = self._buffers.get((name, dtype))
        if flat is None or flat.numel() < numel:
            params = self.param_groups[0]["params"]
            size = max([numel] + [params[q.position].numel() for q in self._layout.plans])
            flat = self._buffers[(name, dtype)] = torch.empty(size, dtype=dtype, device=self._layout.device)
        return flat[:numel].view(tuple(shape))

    def _own_buffer(self, q: ParamPlan, like: Tensor) -> Tensor:
        """A tensor shaped like ``like`` that belongs to parameter ``q`` for the projection phase."""
        buf = self._buffers.get(q.position)
        if buf is None:
            buf = self._buffers[q.position] = torch.empty(like.shape, dtype=like.dtype, device=like.device)
        return buf

    def _stats(self, plans: Sequence[ParamPlan], index: Tensor, params: Sequence[Tensor],
               d: Sequence[Tensor | None], *, with_abs: bool, keep_xx: bool = True,
               with_direction: bool = True) -> tuple[Tensor, Tensor, dict[int, Tensor]]:
        """Per-group sums ``[k, N + 1]`` of x·d, x², d² (and |x|) over the slices of ``plans``.

        Also returns the per-slice sums of x² and, for parameters whose groups run along several
        dims and that are not taken in blocks (:func:`_in_blocks`), x² itself (kept for the cross
        terms of :meth:`_cross`). With ``keep_xx=False`` the caller needs neither (the per-slice sums
        then cover only the weights not packed): no buffer beyond the shared scratch, and the many
        small weights of a supernet are summed together, packed into one flat tensor (:meth:`_packing`).
        With ``with_direction=False`` ``d`` is not read: the sums of x·d and d² are zero (the
        statistics of a score that reads only the weights, taken before the step).
        """
        if not with_direction:
            d = params  # a stand-in the products below read in place of d; their sums with it are zeroed
        acc = self._acc_dtype
        k = 4 if with_abs else 3
        xx_full: dict[int, Tensor] = {}
        dev = self._layout.device
        stats = torch.zeros(k, self.num_groups + 1, dtype=acc, device=dev)
        if not keep_xx:
            pack = self._packing(plans, index, params)
            if pack.positions:
                rows = slice(None)  # the rows of stats (a view) the products are summed into
                if with_direction:
                    both = self._flat.packed(pack.positions, d, self._step) if self._flat else None  # packed already
                    xq, dq = both if both is not None else (None, None)
                    xp = torch.cat([params[i].reshape(-1) for i in pack.positions]) if xq is None else xq
                    dp = torch.cat([params[i].new_zeros(params[i].numel()) if (di := d[i]) is None else di.reshape(-1)
                                    for i in pack.positions]) if dq is None else dq
                    prods = [xp * dp, xp * xp, dp * dp] + ([xp.abs()] if with_abs else [])
                else:  # x², |x| only: the sums with d are zero
                    xp = torch.cat([params[i].reshape(-1) for i in pack.positions])
                    prods = [xp * xp] + ([xp.abs()] if with_abs else [])
                    rows = slice(1, 4, 2) if with_abs else slice(1, 2)  # x², |x|
                if pack.matrix is not None and pack.matrix.dtype == acc:
                    stats[rows] += torch.sparse.mm(pack.matrix, torch.stack(prods, dim=1).to(acc)).t()
                else:
                    flat = torch.stack(prods).to(acc)
                    stats[rows].index_add_(1, pack.groups, flat if pack.elements is None else flat[:, pack.elements])
                plans, index = pack.rest, pack.rest_index
        ds = [torch.zeros_like(params[q.position]) if (dq := d[q.position]) is None else dq for q in plans]
        # Parameters whose every element is a slice of its own (biases, norm weights): many and
        # small, so their products come from one multi-tensor call each.
        vec = [i for i, q in enumerate(plans) if q.is_vector]
        small: dict[int, Tensor] = {}
        if vec:
            xs = [params[plans[i].position].view(-1) for i in vec]
            dv = [ds[i].view(-1) for i in vec]
            lists = [torch._foreach_mul(xs, dv), torch._foreach_mul(xs, xs), torch._foreach_mul(dv, dv)]
            if with_abs:
                lists.append(torch._foreach_abs(xs))
            small = dict(zip(vec, (torch.stack(t) for t in zip(*lists))))
        parts: list[Tensor] = []  # [k, slices of one entry] each
        for i, q in enumerate(plans):
            if i in small:
                parts.extend([small[i]] * len(q.entries))
                continue
            x, dq = params[q.position], ds[i]
            if _in_blocks(q, x):  # one fused loop, or a block of rows at a time, reduced while in cache
                if _kernels.usable(x):
                    hp = self.param_groups[0]
                    sgd, alive = None, None
                    if q.position in self._fused:
                        assert x.grad is not None  # _fusable takes only parameters with a gradient
                        sgd = (x.grad, hp["momentum"], hp["dampening"], hp["weight_decay"])
                        if self._redundant is not None:  # its zero groups' gradient masked in the loop
                            alive = self._alive_masks().get(q.position)
                    pre = None if with_direction or sgd is not None else self._presum(q.position, x)
                    if pre is not None:  # summed by the fused loop of the step before
                        sums = {0: pre[0][:k], 1: pre[1][:k]}
                    else:
                        sums = dict(zip((0, 1), _kernels.stats(x, _like(dq, x) if with_direction else None,
                                                               math.prod(x.shape[2:]),
                                                               with_abs=with_abs, sgd=sgd, alive=alive)))
                else:
                    e1 = next(e for e in q.entries if e.dim == 1)
                    block = self._scratch("block", x.dtype, (k * max(BLOCK, x[0].numel()),))
                    sums = dict(zip((0, 1), block_sums(x, dq, e1.post, with_abs=with_abs, scratch=block)))
                parts.extend(sums[e.dim] for e in q.entries)
                continue
            # The k products side by side, so that each dim's slice sums are one reduction for all of them.
            buf = self._scratch("products", x.dtype, (k, *x.shape))
            torch.mul(x, dq, out=buf[0])
            torch.mul(x, x, out=buf[1])
            torch.mul(dq, dq, out=buf[2])
            if with_abs:
                torch.abs(x, out=buf[3])
            if q.multi_dim and keep_xx:
                xx_full[q.position] = self._own_buffer(q, x).copy_(buf[1])
            by_dim: dict[int, Tensor] = {}
            for e in q.entries:  # entries on one dim (nested whole-tensor groups, say) share their slices
                dim_sums = by_dim.get(e.dim)
                if dim_sums is None:
                    dim_sums = by_dim[e.dim] = e.stacked_sums(buf)
                parts.append(dim_sums)
        values = (torch.cat(parts, dim=1).to(acc) if parts else torch.zeros(k, 0, dtype=acc, device=dev))
        stats.index_add_(1, index, values)
        if not with_direction:
            stats[0].zero_()
            stats[2].zero_()
        return stats, values[1], xx_full

    def _presum(self, position: int, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """The sums of ``x`` (rows, input channels: x·d, x², d², |x|, the sums with d zero) that the
        fused loop of the previous step took as it wrote ``x``, if they are for this step and ``x``
        was not changed in place since (its version counter; a write through ``.data`` does not
        count one: such sums would only steer the scores, never the exact zeros)."""
        if self._presums is None or self._presums[0] != self._step:
            return None
        got = self._presums[1].get(position)
        if got is None or got[0] != x._version or got[1] != x.data_ptr():
            return None
        return got[2]

    def _packing(self, plans: Sequence[ParamPlan], index: Tensor, params: Sequence[Tensor]) -> _Packing:
        """How :meth:`_stats` sums the small weights of ``plans`` (grouped along a dim, fewer than
        ``_PACK_MAX`` elements, of the first such weight's dtype, not taken in blocks) all at once:
        their elements concatenated, each element (once per entry of its weight) sent to its group by
        one ``index_add_``; the other plans and their slices' groups. Built once per ``plans``."""
        key = id(plans)
        cached = self._packings.get(key)
        if cached is not None and cached[0] is plans:
            return cached[1]
        packed: list[int] = []
        rest: list[ParamPlan] = []
        keep: list[Tensor] = []
        elements: list[Tensor] = []
        groups: list[Tensor] = []
        dtype = None
        offset = 0
        for q in plans:
            x = params[q.position]
            small = x.numel() < _PACK_MAX and not _in_blocks(q, x) and (dtype is None or x.dtype == dtype)
            keep.extend(torch.full((e.size,), not small, dtype=torch.bool, device=index.device) for e in q.entries)
            if not small:
                rest.append(q)
                continue
            dtype = x.dtype
            packed.append(q.position)
            ids = torch.arange(x.numel(), device=index.device)
            for e in q.entries:
                elements.append(ids + offset)
                groups.append(e.index[(ids // e.post) % e.size])
            offset += x.numel()
        if packed:
            el = torch.cat(elements)
            one_each = el.numel() == offset  # every packed weight has one entry: no gather needed
            gr = torch.cat(groups)
            matrix = None
            if index.device.type in ("cpu", "cuda"):
                ones = torch.ones(el.numel(), dtype=self._acc_dtype, device=index.device)
                coo = torch.sparse_coo_tensor(torch.stack([gr, el]), ones, (self.num_groups + 1, offset),
                                              check_invariants=True)
                with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta": ours is a plain product
                    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                    matrix = coo.coalesce().to_sparse_csr()
            pack = _Packing(tuple(packed), None if one_each else el, gr, tuple(rest),
                            index[torch.cat(keep)] if keep else index, matrix)
        else:
            pack = _Packing((), None, index[:0], tuple(plans), index)
        self._packings[key] = (plans, pack)
        return pack

    def _cross(self, plans: Sequence[ParamPlan], xx_full: dict[int, Tensor], coef_dim: Tensor,
               cross: Tensor) -> None:
        """Add to ``cross`` (per active slice) the shrink term's share in ⟨x̂_g, x_g⟩ that comes from
        the other dims of a parameter grouped along several (an element in two G_r groups is
        shrunk by both): per slice, Σ of the other dims' coefficients weighted by x². A matrix-
        vector product per pair of dims, for the parameters whose x² is in ``xx_full``."""
        for q, dims in zip(plans, self._by_dim()):
            xx = xx_full.get(q.position)
            if xx is None:
                continue
            for a in dims:
                extra = sum(a.entry.weighted_sums(xx, b.entry, b.of(coef_dim).to(xx.dtype))
                            for b in dims if b is not a)
                for o in a.offsets:
                    cross[o:o + a.entry.size] += extra

    def _step_in_blocks(self, x: Tensor, d: Tensor | None, dims: Sequence[_Dim], u: Tensor, v: Tensor,
                        coef_dim: Tensor, cross: Tensor, lr: float) -> None:
        """The whole step on a weight taken in blocks of rows (:func:`_in_blocks`): ``x ← (1 − lr·C)·x
        − lr·d`` (C: the coefficients of each element's row and column groups), and into ``cross``
        the other-dim shares of the shrink term, Σ_row C_col·x² and Σ_col C_row·x² of the old x
        (see :meth:`_cross`), taken while the block is in cache."""
        if _kernels.usable(x):
            by_dim = {dm.entry.dim: dm for dm in dims}
            rows_dim, cols_dim = by_dim.get(0), by_dim.get(1)
            o, i = x.shape[0], x.shape[1]
            u0, c0 = ((rows_dim.of(u).to(x.dtype), rows_dim.of(coef_dim).to(x.dtype)) if rows_dim is not None
                      else (x.new_ones(o), x.new_zeros(o)))
            v1, c1 = ((cols_dim.of(v).to(x.dtype), cols_dim.of(coef_dim).to(x.dtype)) if cols_dim is not None
                      else (x.new_zeros(i), x.new_zeros(i)))
            rows, cols = _kernels.step(x, None if d is None else _like(d, x), u0, v1, c0, c1, lr,
                                       math.prod(x.shape[2:]))
            for dim, extra in ((rows_dim, rows), (cols_dim, cols)):
                if dim is not None:
                    for start in dim.offsets:
                        cross[start:start + dim.entry.size] += extra
            return
        first, second = dims
        post = second.entry.post
        x2 = x.view(first.entry.size, -1)
        o, m = x2.shape
        c0, u0 = first.of(coef_dim).to(x.dtype), first.of(u).to(x.dtype)
        c1, v1 = (second.of(t).to(x.dtype).repeat_interleave(post) for t in (coef_dim, v))
        per = max(1, BLOCK // m)  # rows per block
        rows, cols = x.new_empty(o), x.new_zeros(m)
        block = self._scratch("block", x.dtype, (max(BLOCK, m),))
        ds = d.reshape(o, m).split(per) if d is not None else (None,) * o
        blocks = zip(x2.split(per), ds, c0.split(per), u0.view(-1, 1).split(per), rows.split(per))
        views: dict[int, tuple[Tensor, Tensor]] = {}
        for xb, db, c0b, u0b, rb in blocks:
            n = xb.shape[0]
            if n not in views:  # the same views for every full block
                sq = block[:n * m].view(n, m)
                views[n] = (sq, sq.t())
            sq, sq_t = views[n]
            torch.mul(xb, xb, out=sq)
            torch.mv(sq, c1, out=rb)
            cols.addmv_(sq_t, c0b)
            xb.mul_(torch.add(u0b, v1, out=sq))
            if db is not None:
                xb.add_(db, alpha=-lr)
        cols = cols if post == 1 else cols.view(-1, post).sum(1)
        for dim, extra in ((first, rows), (second, cols)):
            for start in dim.offsets:
                cross[start:start + dim.entry.size] += extra

    # ------------------------------------------------------------------ the three phases
    def _selection_stats(self, params: Sequence[Tensor], d: Sequence[Tensor | None], *, packed: bool,
                         with_direction: bool = True) -> GroupStats:
        """This step's statistics of every group, for the selector (``packed``: the small weights summed
        together, see :meth:`_stats`; ``with_direction=False``: the weights' own sums only)."""
        norm = self._score.needs_norm_sq
        plans: Sequence[ParamPlan] = self._layout.plans
        index = self._layout.slice_index
        if not with_direction and packed and self._reads_norm_slices_only:
            plans, index, _ = self._weights_only_plans()
        stats, _, _ = self._stats(plans, index, params, d, with_abs=True, keep_xx=not packed,
                                  with_direction=with_direction)
        s = stats[:, : self.num_groups]
        return GroupStats(dot=s[0], x_sq=s[1], d_sq=s[2], x_abs=s[3], size=self._layout.group_size.to(s.dtype),
                          family=None, norm_sq=self._layout.norm_sq(params, s.dtype) if norm else None,
                          norm_size=self._layout.norm_size.to(s.dtype) if norm else None)

    @property
    def _reads_norm_slices_only(self) -> bool:
        """Whether a weights-only selection reads a normalized group's γ and β alone (a score that
        needs the normalization sums and does not read normalized groups' weights): the plans it
        sums are then :meth:`_weights_only_plans`, at the period start and in the step before it."""
        return bool(self._score.needs_norm_sq) and not self._selector.reads_normalized_weights

    def _weights_only_plans(self) -> tuple[Sequence[ParamPlan], Tensor, frozenset[int]]:
        """The layout's plans restricted to what a period start's score reads when it reads a
        normalized group's γ and β only (``reads_normalized_weights = False``): the entries that hold
        a group without normalization slices, and the normalization slices themselves; their slice
        index and their parameters' positions. Built once. On ResNet-50 (every group has its
        BatchNorm) that leaves out every convolution: the period start reads none of them, and the
        step before it sums none."""
        if self._norm_plans is None:
            table, layout = self._table, self._layout
            unnormed = torch.zeros(self.num_groups + 1, dtype=torch.bool, device=layout.device)
            unnormed[: self.num_groups] = layout.norm_size == 0
            position = np.array([q.position for q in table.plans], dtype=np.int64)[table.entry_plan]
            keep = table.touched(unnormed) | np.isin(position, np.array(layout.norm_positions, dtype=np.int64))
            plans = table.restrict(keep)
            self._norm_plans = (plans, table.kept_index(keep), frozenset(q.position for q in plans))
        return self._norm_plans

    def _partition(self, params: Sequence[Tensor], d: Sequence[Tensor | None]) -> None:
        """Choose G_r (the half-space schedule, once, at warmup_steps): the selector's choice."""
        # A selector that saw no warm-up gets the statistics summed weight by weight, the order DHSPG's
        # half-space partition always used (its runs reproduce bit for bit); one that did, packed sums,
        # as at its warm-up steps.
        stats = self._selection_stats(params, d, packed=self._selector.observes_warmup)
        zero = self._zero[: self.num_groups].cpu().numpy()
        chosen = self._selector.select(Selection(stats=stats, zero=zero, period=0, periods=1, progressive=False))
        redundant = torch.zeros(self.num_groups + 1, dtype=torch.bool, device=self._layout.device)
        redundant[torch.as_tensor(list(chosen), dtype=torch.int64, device=redundant.device)] = True
        self._set_redundant(self._broadcast(redundant))
        self._buffers.clear()  # the partition used scratch for every plan; G_r needs less

    def _broadcast(self, mask: Tensor) -> Tensor:
        """Rank 0's mask on every rank, so that all ranks project the same groups."""
        if not (dist.is_available() and dist.is_initialized()):
            return mask
        return self._broadcast_tensor(mask.to(torch.uint8)).bool()

    def _broadcast_tensor(self, t: Tensor) -> Tensor:
        """Rank 0's ``t`` on every rank of ``process_group`` (``t`` itself outside torch.distributed)."""
        if not (dist.is_available() and dist.is_initialized()):
            return t
        pg = self._process_group
        if dist.get_world_size(pg) == 1:
            return t
        flat = t.contiguous().clone()
        src = dist.get_global_rank(pg, 0) if pg is not None else 0
        dist.broadcast(flat, src=src, group=pg)
        return flat

    def _set_redundant(self, redundant: Tensor, touched: np.ndarray | None = None) -> None:
        """Record G_r and restrict the work of later steps to the slices it touches (``touched``:
        ``_table.touched(redundant)``, when the caller has it)."""
        self._redundant = redundant
        # One host read, here only: which parameter slices G_r touches decides what later steps visit.
        table = self._table
        keep = table.touched(redundant) if touched is None else touched
        self._active = table.restrict(keep)
        self._active_entries = np.flatnonzero(keep)  # the active entries' numbers in the table
        self._active_index = table.kept_index(keep)  # = slice_index(self._active)
        self._active_dims = None  # built when a half-space step needs them (_by_dim)
        self._zero_slices, self._sgd_plans = None, None

    @property
    def _table(self) -> SliceTable:
        """Index structures over every entry and slice of the layout (:class:`SliceTable`), built once."""
        if self._slice_table is None:
            self._slice_table = SliceTable(self._layout.plans, self._layout.slice_index)
        return self._slice_table

    def _static_entries(self) -> _StaticEntries:
        """What does not change about every entry of the layout: its parameter's position and whether
        the progressive schedule scales it by rows (a large parameter's leading dim); built once."""
        if self._static is None:
            table, params = self._table, self.param_groups[0]["params"]
            position = np.array([q.position for q in table.plans], dtype=np.int64)[table.entry_plan]
            indexed = np.array([params[p].numel() >= _INDEXED_MIN and e.pre == 1
                                for p, e in zip(position.tolist(), table.entries)], dtype=bool)
            self._static = _StaticEntries(position, indexed.reshape(-1))
        return self._static

    def _membership_views(self, groups: Tensor) -> list[Tensor]:
        """Per entry of the layout: the 0/1 membership in ``groups`` (bool ``[N + 1]``) of its slices, in its
        parameter's dtype and shaped to broadcast against it (``Entry.view``): views of one buffer per
        dtype over all slices, written here (one copy per dtype); valid until the next call."""
        table, params = self._table, self.param_groups[0]["params"]
        dtypes = [params[q.position].dtype for q in table.plans]
        cached = self._memberships
        if cached is None or cached[0] != dtypes:
            bufs = {dt: torch.empty(table.index.numel(), dtype=dt, device=table.index.device) for dt in set(dtypes)}
            starts = table.entry_start.tolist()
            views = [bufs[dtypes[i]][starts[k]:starts[k + 1]].view(e.view)
                     for k, (i, e) in enumerate(zip(table.entry_plan.tolist(), table.entries))]
            cached = self._memberships = (dtypes, bufs, views)
        hits = groups[table.index]
        for buf in cached[1].values():
            buf.copy_(hits)
        return cached[2]

    @overload
    def _by_dim(self, index: Literal[False] = False) -> tuple[tuple[_Dim, ...], ...]: ...

    @overload
    def _by_dim(self, index: Literal[True]) -> Tensor: ...

    def _by_dim(self, index: bool = False) -> tuple[tuple[_Dim, ...], ...] | Tensor:
        """The active plans' entries by dim, or (``index``) every active slice's groups on its dim
        (:func:`_dims`); built once per G_r, when a half-space step first needs them."""
        if self._active_dims is None:
            self._active_dims, self._dim_index = _dims(self._active, self.num_groups, self._layout.device)
        return self._dim_index if index else self._active_dims

    def _hybrid_step(self, params: Sequence[Tensor], d: Sequence[Tensor | None], hp: dict[str, Any], *,
                     last: bool) -> None:
        lr = hp["lr"]
        assert self._redundant is not None
        plans = self._active
        stats, xx_slices, xx_full = self._stats(plans, self._active_index, params, d, with_abs=False)
        dot, x_sq, d_sq = stats
        pending = self._redundant & ~self._zero
        live = pending & (x_sq > 0)
        x_norm = x_sq.sqrt()
        lam = group_lambdas(dot, x_norm, d_sq, lmbda=hp["lmbda"], amplify=hp["lmbda_amplify"],
                            coeff=hp["hat_lmbda_coeff"])
        if hp.get("lambda_rule", "fixed") == "schedule":  # state dicts of older runs have no lambda_rule
            lam = schedule_lambdas(lam, dot, x_norm, lr=lr, steps_left=hp["end_step"] - self._step,
                                   gain=hp["lambda_gain"], epsilon=hp["epsilon"])
        lam = torch.where(live, lam, 0.0)
        coef = torch.where(live, lam / torch.where(live, x_norm, 1.0), 0.0)
        self._lambdas = lam[:-1].to(self._lambdas.dtype)
        self._redundant_norm = (x_sq * self._redundant).sum().sqrt().to(self._redundant_norm.dtype)
        # The step x̂ = x − lr·d − lr·(Σ coef over the element's groups)·x, and on the way the sums
        # that give ⟨x̂_g, x_g⟩ = ‖x_g‖² − lr⟨d_g, x_g⟩ − lr·Σ_g (Σ coef)·x²: per slice, its own dim's
        # coefficients (coef_dim) times Σ x², plus the other dims' shares (x² of the old x).
        coef_dim = coef[self._by_dim(index=True)].sum(1)
        cross = coef_dim * xx_slices
        self._cross(plans, xx_full, coef_dim, cross)
        u, v = 1 - lr * coef_dim, coef_dim * -lr
        xs: list[Tensor] = []  # the parameters with one group per element, shrunk together
        factors: list[Tensor] = []
        done: set[int] = set()  # parameters whose whole step is taken here
        for q, dims in zip(plans, self._by_dim()):
            x = params[q.position]
            if _in_blocks(q, x):
                self._step_in_blocks(x, d[q.position], dims, u, v, coef_dim, cross, lr)
                done.add(q.position)
            elif q.is_vector:
                xs.append(x.view(-1))
                factors.append(dims[0].of(u).to(x.dtype))
            else:
                x.mul_(self._shrink(x, dims, u, v))
        if xs:
            torch._foreach_mul_(xs, factors)
        self._plain_step(params, d, lr, skip=frozenset(done))
        inner = x_sq - lr * dot - lr * torch.zeros_like(coef).index_add_(0, self._active_index, cross)
        newly = pending & ((inner < hp["epsilon"] * x_sq) | (x_sq == 0))
        if last:
            rest = pending & ~newly
            self._forced = int(rest.sum())  # host read, once, at the end of the projection phase
            if self._forced:
                warnings.warn(self._forced_message(rest, hp["end_step"]), ForcedProjectionWarning,
                              stacklevel=_caller_level())
            newly = newly | rest
        self._zero = self._zero | newly
        # The groups that reached zero now: clear their slices of x and of the optimizer state
        # (from the next step on their gradients are masked, so both stay zero).
        if not self._host_reads or bool(newly.any()):  # a host read on CPU only, where it is free
            self._zero_slices, self._sgd_plans = None, None  # the zero set changed
            keys = self._rule.state_keys
            self._zero_slices_of(newly, [[params[q.position], *(self.state[params[q.position]].get(k) for k in keys)]
                                         for q in plans], host=self._host_reads)
        if last:
            self._buffers.clear()

    # ------------------------------------------------------------------ the progressive schedule
    def _progressive_step(self, params: Sequence[Tensor], d: Sequence[Tensor | None], hp: dict[str, Any],
                          t: int, *, fused: Mapping[int, Any]) -> None:
        """One step of the projection window under the progressive schedule (see ``_schedule``):
        at a period start select the period's groups; take the base step everywhere; shrink the
        period's groups by ``(r − 1)/r`` (r: steps left in the period), which is 0 at its last step.
        The weights in ``fused`` have had all of it in their fused loop."""
        bounds = period_bounds(hp["start_step"], hp["end_step"], hp["periods"])
        p = max(i for i in range(len(bounds) - 1) if bounds[i] <= t)
        r = bounds[p + 1] - t
        factor = (r - 1) / r
        if t == bounds[p] and self._period != p:
            self._select_period(params, d, p, len(bounds) - 1)
            # The weights whose direction is their (updated) momentum buffer: step and shrink in one loop.
            fused = dict(fused)
            for pos, masks in (self._sgd_masks().items() if _sgd_rule_ok(self._rule, hp) else ()):
                x, dx = params[pos], d[pos]
                if dx is not None and dx is self.state[x].get("momentum_buffer") and _kernels.usable(x, dx):
                    self._sgd_call(pos, x, dx, masks)(
                        None, factor if self._shrinking is not None else 1.0, momentum=hp["momentum"],
                        dampening=hp["dampening"], weight_decay=hp["weight_decay"], lr=hp["lr"])
                    fused[pos] = masks
        self._plain_step(params, d, hp["lr"], skip=frozenset(fused))
        if self._shrinking is None:
            return
        self._scale_groups(params, factor, fused)
        if r == 1:  # the period's groups are exactly zero now: freeze them, clear their optimizer state
            newly = self._shrinking
            self._zero = self._zero | newly
            self._shrinking, self._shrink_plans = None, ()
            self._shrink_index = self._shrink_index[:0]
            self._shrink_lists, self._shrink_indexed = [], []
            self._zero_slices, self._sgd_plans = None, None
            keys = self._rule.state_keys
            self._zero_slices_of(newly, [[params[q.position], *(self.state[params[q.position]].get(k) for k in keys)]
                                         if q.position not in fused else [] for q in self._active],
                                 host=self._host_reads)

    def _scale_groups(self, params: Sequence[Tensor], factor: float, fused: Mapping[int, Any]) -> None:
        """Multiply every slice of the period's groups by ``factor`` (an element in two of them,
        by its square), but in the weights of ``fused`` (their loop has done it)."""
        assert self._shrinking is not None
        for targets, masks in self._shrink_lists:  # x·(1 − s + factor·s), in place: x + (factor − 1)·x·s
            torch._foreach_addcmul_(targets, targets, masks, value=factor - 1)
        for x, dim, where in self._shrink_indexed:
            x.index_copy_(dim, where, x.index_select(dim, where).mul_(factor))
        # The weights the fused loop can take are in neither list: when it did not take them this
        # step (a period start, say), their factors come from its masks.
        for pos, (_, row_count, _, col_count) in self._sgd_masks().items():
            if pos in fused:
                continue
            x2 = params[pos].view(params[pos].shape[0], -1)
            for dim, count in ((0, row_count), (1, col_count)):
                if bool(count.any()):
                    f = torch.pow(torch.tensor(factor, dtype=x2.dtype, device=x2.device), count.to(x2.dtype))
                    x2.mul_(f.view(-1, 1) if dim == 0 else f)

    def _select_period(self, params: Sequence[Tensor], d: Sequence[Tensor | None], p: int, periods: int, *,
                       with_direction: bool = True) -> None:
        """At the start of period ``p``: the selector's choice among the groups not yet zero (from
        this step's directions ``d``, or from the weights alone with ``with_direction=False``); ``p``
        becomes the current period."""
        stats = self._selection_stats(params, d, packed=True, with_direction=with_direction)
        zero = self._zero[: self.num_groups].cpu().numpy()
        new = self._selector.select(Selection(stats=stats, zero=zero, period=p, periods=periods, progressive=True))
        self._begin_period(list(new))
        self._period = p

    def _begin_period(self, new: Sequence[int]) -> None:
        """Make ``new`` the groups shrunk in this period (group ids in ``[0, num_groups)``)."""
        dev = self._layout.device
        chosen = np.zeros(self.num_groups + 1, dtype=bool)
        chosen[np.asarray(new, dtype=np.int64)] = True
        shrinking = torch.from_numpy(chosen).to(dev)
        table = self._table
        keep = table.touched(shrinking)  # the entries with a slice in the period's groups (⊆ the active ones)
        # an entry touches the zero set or the period's groups where it touches either
        self._set_redundant(self._zero | shrinking, touched=self._zero_touched() | keep)
        self._buffers.clear()
        if not new:
            self._shrinking, self._shrink_plans = None, ()
            return
        self._shrinking = shrinking
        self._sgd_plans = None
        fusable = self._sgd_masks()  # scaled in their own loop (or from its masks), not by the lists
        self._shrink_plans = table.restrict(keep)
        self._shrink_index = table.kept_index(keep)
        # How a step scales the period's slices. Along the leading dim of a large parameter: only the
        # selected rows, found once here (one host read, at the period start), by index_select /
        # index_copy_. Every other entry: a 0/1 membership s shaped to broadcast against the
        # parameter, x + (factor − 1)·x·s in place, one multi-tensor call per list (no factor
        # tensors to allocate; exactly 0 at factor 0); lists by entry rank, so that no call writes
        # one parameter twice (CUDA's fused path would race). The memberships are views of one
        # buffer per dtype over every slice of the layout, written here by one copy.
        params = self.param_groups[0]["params"]
        static = self._static_entries()
        listed = keep & ~static.indexed
        if fusable:
            listed &= ~np.isin(static.position, np.fromiter(fusable, dtype=np.int64))
        indexed: list[tuple[Tensor, int, Tensor]] = []
        big = np.flatnonzero(keep & static.indexed)
        hits: Tensor | None = None
        if big.size:
            for k in big.tolist():
                pos = int(static.position[k])
                if pos in fusable:
                    continue
                if hits is None:
                    hits = shrinking[table.index].cpu()
                x, e = params[pos], table.entries[k]
                where = hits[table.entry_start[k]:table.entry_start[k + 1]].nonzero().flatten()
                if where.numel():
                    indexed.append((x, e.dim, where.to(x.device)))  # dim: 0 or a leading size-1 dim
        # each listed entry's rank among its parameter's listed entries
        cs = np.cumsum(listed)
        rank = cs - 1 - (cs - listed)[table.plan_first[table.entry_plan]]
        ids = np.flatnonzero(listed)
        lists: list[tuple[list[Tensor], list[Tensor]]] = []
        if ids.size:
            views = self._membership_views(shrinking)
            ranks = rank[ids]
            for r in range(int(ranks.max()) + 1):
                mine = ids[ranks == r].tolist()
                lists.append(([params[p] for p in static.position[mine].tolist()], [views[k] for k in mine]))
        self._shrink_lists = lists
        self._shrink_indexed = indexed

    def _zero_touched(self) -> np.ndarray:
        """``_table.touched(self._zero)``, kept while the zero set is the same tensor (it is replaced,
        never written in place, when groups reach zero)."""
        if self._zero_touch is None or self._zero_touch[0] is not self._zero:
            self._zero_touch = (self._zero, self._table.touched(self._zero))
        return self._zero_touch[1]

    def _forced_message(self, rest: Tensor, end_step: int) -> str:
        """The warning for the G_r groups (mask ``rest``) forced to zero at the end of the phase."""
        return (f"{type(self).__name__}: {self._selector.forced_message(rest)} had not reached zero by "
                f"end_step={end_step} and were set to zero now; {self._gentler()}")

    def _gentler(self) -> str:
        """What the forced-projection warning suggests: the scheduled λ forces only when nothing moves."""
        if self.param_groups[0].get("lambda_rule", "fixed") == "fixed":
            return ("for a gentler finish use lambda_rule='schedule' (the default), or raise lmbda, epsilon or "
                    "end_step")
        return ("with the scheduled λ that happens only where lr is 0 at the last projection step: keep lr > 0 "
                "until end_step")

    # ------------------------------------------------------------------ reporting
    @torch.no_grad()
    def _group_abs(self) -> Tensor:
        params = self.param_groups[0]["params"]
        rows = [e.slice_sums(params[q.position].abs()).to(torch.float64)
                for q in self._layout.plans for e in q.entries]
        if not rows:
            return torch.zeros(self.num_groups, dtype=torch.float64)
        return self._layout.segment_sum(torch.cat(rows)[:, None])[: self.num_groups, 0]

    def zero_groups(self) -> Tensor:
        """Bool mask ``[N]``: the prunable groups whose every element is exactly zero now."""
        return self._group_abs()[: self._num_prunable] == 0

    def _counted_zero(self, zero: Tensor) -> Tensor:
        """The prunable groups zero in ``zero`` (layout groups), but the selector's moot ones."""
        counted = zero[: self._num_prunable]
        moot = self._selector.moot_groups()
        return counted if moot is None else counted & ~torch.from_numpy(moot).to(counted.device)

    def group_sparsity(self) -> float:
        """The fraction of the N prunable groups whose every element is exactly zero (not counting
        those the selector calls moot: inside an erased operator, they go with it)."""
        n = self._num_prunable
        return int(self._counted_zero(self._group_abs() == 0).sum()) / n if n else 0.0

    def metrics(self) -> dict[str, Any]:
        """Numbers to log: sparsity reached, target, and the state of the projection (and the selector's)."""
        hp = self.param_groups[0]
        n = self._num_prunable
        all_zero = self._group_abs() == 0
        zero = int(self._counted_zero(all_zero).sum())
        live = self._lambdas[self._lambdas > 0]
        red = self._redundant
        # The phase of the steps taken so far: "warmup" until the partition, "done" once G_r is zero.
        phase = "warmup" if self._step <= hp["start_step"] else (
            "projection" if self._step < hp["end_step"] else "done")
        m = {
            "step": self._step,
            "phase": phase,
            "num_groups": n,
            "target_zero_groups": self.target_zero_groups,
            "num_zero_groups": zero,
            "group_sparsity": zero / n if n else 0.0,
            "target_group_sparsity": hp["target_group_sparsity"],
            "num_redundant_groups": 0 if red is None else int(red[:n].sum()),
            "num_projected_groups": 0 if red is None else int((self._zero[:n] & red[:n]).sum()),
            "redundant_norm": float(self._redundant_norm),
            "lambda_mean": float(live.mean()) if live.numel() else math.nan,
            "lambda_min": float(live.min()) if live.numel() else math.nan,
            "lambda_max": float(live.max()) if live.numel() else math.nan,
            "forced_projection": bool(self._forced),
            "num_forced_groups": self._forced or 0,
            "schedule": hp["schedule"],
            "period": self._period + 1 if hp["schedule"] == "progressive" else None,
            "num_shrinking_groups": 0 if self._shrinking is None else int(self._shrinking.sum()),
        }
        m.update(self._selector.metrics(all_zero, self._zero[: self.num_groups]))
        return m

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["dhspg"] = {
            "step": self._step,
            "redundant": None if self._redundant is None else self._redundant.clone(),
            "zero": self._zero.clone(),
            "lambdas": self._lambdas.clone(),
            "redundant_norm": self._redundant_norm.clone(),
            "forced": self._forced,
            "num_groups": self.num_groups,
            "shrinking": None if self._shrinking is None else self._shrinking.clone(),
            "period": self._period,
        }
        own = self._selector.state_dict()
        if own is not None:
            sd[self._selector.state_key] = own
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self._selector.load_state_dict(state_dict.pop(self._selector.state_key, None))
        extra = state_dict.pop("dhspg", None)
        if extra is None:
            raise OtonasError("this state dict has no 'dhspg' entry: it was not saved by DHSPG.state_dict()")
        if extra["num_groups"] != self.num_groups:
            raise OtonasError(f"the state dict is for {extra['num_groups']} prunable groups but this optimizer has "
                              f"{self.num_groups}; load it into an optimizer built on the same search space")
        saved = state_dict["param_groups"][0].get("variant") if state_dict.get("param_groups") else None
        if saved is not None and saved != self.param_groups[0]["variant"]:
            raise OtonasError(f"the state dict is from a DHSPG with variant={saved!r}, this one has "
                              f"variant={self.param_groups[0]['variant']!r}; build the optimizer with variant={saved!r}")
        super().load_state_dict(state_dict)
        dev = self._layout.device
        self._reset_run_state()
        self._step = int(extra["step"])
        self._zero = extra["zero"].to(dev)
        self._lambdas = extra["lambdas"].to(dev)
        self._redundant_norm = extra["redundant_norm"].to(dev)
        self._forced = extra["forced"]
        if extra["redundant"] is not None:
            self._set_redundant(extra["redundant"].to(dev))
        self._period = int(extra.get("period", -1))
        shrinking = extra.get("shrinking")
        if shrinking is not None:
            self._begin_period(torch.nonzero(shrinking[:-1]).flatten().tolist())


@dataclass(frozen=True, eq=False)
class _Dim:
    """The entries of one grouped parameter along one dim: they share their slices."""

    entry: Entry  # the first of them
    offsets: tuple[int, ...]  # where each one's slices start among the active slices

    def of(self, per_slice: Tensor) -> Tensor:
        """This dim's part of a per-active-slice vector."""
        return per_slice[self.offsets[0]:self.offsets[0] + self.entry.size]


def _dims(plans: Sequence[ParamPlan], n: int, device: torch.device) -> tuple[tuple[tuple[_Dim, ...], ...], Tensor]:
    """Each plan's entries grouped by dim (in dim order), and for every slice of ``plans`` the
    groups of all entries on its dim (``[slices, most entries on one dim]``, padded with ``n``,
    the bin of no group): the coefficients of an element's groups on one dim add up."""
    dims: list[tuple[_Dim, ...]] = []
    rows: list[Tensor] = []
    offset = 0
    for q in plans:
        by_dim: dict[int, list[tuple[Entry, int]]] = {}
        for e in q.entries:
            by_dim.setdefault(e.dim, []).append((e, offset))
            offset += e.size
        dims.append(tuple(_Dim(v[0][0], tuple(o for _, o in v)) for _, v in sorted(by_dim.items())))
        rows.extend(torch.stack([f.index for f, _ in by_dim[e.dim]], dim=1) for e in q.entries)
    width = max((r.shape[1] for r in rows), default=1)
    index = torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[1]), value=n) for r in rows]) if rows else (
        torch.zeros(0, width, dtype=torch.int64, device=device))
    return tuple(dims), index


@dataclass(frozen=True, eq=False)
class _StaticEntries:
    """Per entry of the layout (:class:`SliceTable` numbering): what a period start reads of it."""

    position: np.ndarray  # int64: its parameter's position in the optimizer's list
    indexed: np.ndarray  # bool: scaled by rows (index_select / index_copy_), see _INDEXED_MIN


@dataclass(frozen=True, eq=False)
class _Packing:
    """The small weights :meth:`DHSPG._stats` sums packed together, and what is left to it."""

    positions: tuple[int, ...]  # the packed weights, in the order they are concatenated
    elements: Tensor | None  # per (element, entry): the element's position in the packed tensor (None: each once)
    groups: Tensor  # and its group
    rest: tuple[ParamPlan, ...]  # the other plans
    rest_index: Tensor  # their slices' groups
    # [N + 1, packed elements], 1 where an element is in a group (CSR, the statistics' dtype): the
    # per-group sums as one sparse product, a tenth of the gather and index_add_ over (element, entry)
    # pairs; None where the device has no sparse product (the gather and index_add_ then)
    matrix: Tensor | None = None


_PACK_MAX = 1 << 12
"""Weights with fewer elements have their statistics summed packed together (a supernet has
thousands of them, whose per-weight calls would cost more than their arithmetic)."""


_SGDMasks = tuple[Tensor, Tensor, Tensor, Tensor]

"""A weight's live rows, the period's groups per row, live columns (of its ``[O, M]`` view), and the
period's groups per column: what ``_kernels.sgd_step`` takes besides the tensors."""


@dataclass(frozen=True, eq=False)
class _MaskTable:
    """Every row and column (of the ``[O, M]`` view) of the weights the fused loops can take, side by
    side: ``index[r, j]`` the group of the r-th entry on that column's dim (padded with
    ``num_groups + 1``), two runs of ``lengths`` per weight (its rows, then its columns), the
    weight at ``slot[position]``. A per-group mask read at all of them is one gather."""

    index: Tensor
    lengths: list[int]
    slot: dict[int, int]

    def gather(self, per_group: Tensor, pad: Any, reduce: Literal["any", "sum"]) -> Tensor:
        """``per_group`` (``[N + 1]``) at every entry of ``index`` (``pad`` where no entry is), reduced
        over the entries of each row and column (``any`` or ``sum``): ``[sum(lengths)]``. Through numpy
        on the CPU (a third of PyTorch's time at ~10⁵ rows and columns)."""
        if self.index.device.type == "cpu" and per_group.device.type == "cpu":
            ext = np.append(per_group.numpy(), np.array(pad, dtype=per_group.numpy().dtype))
            at = ext[self.index.numpy()]
            return torch.from_numpy(at.any(0) if reduce == "any" else at.sum(0))
        at_t = torch.cat([per_group, per_group.new_full((1,), pad)])[self.index]
        return at_t.any(0) if reduce == "any" else at_t.sum(0)


def _sgd_rule_ok(rule: Any, hp: dict[str, Any]) -> bool:
    """Whether the base rule is SGD whose direction is its momentum buffer (momentum, no Nesterov)."""
    return isinstance(rule, SGDRule) and hp["momentum"] != 0 and not hp["nesterov"]


def _sgd_candidate(q: ParamPlan, x: Tensor) -> bool:
    """Whether weight ``x`` (plan ``q``) can take its whole step in ``_kernels.sgd_step``: 2 or more
    dims, grouped along its output and / or input channels only, large enough for the loop to
    pay, and a tensor the loops take (CPU, contiguous, float32 / float64)."""
    return (x.dim() >= 2 and {e.dim for e in q.entries} <= {0, 1} and x.numel() >= _kernels.MIN_NUMEL
            and _kernels.usable(x))


_INDEXED_MIN = 1 << 14
"""Parameters with at least this many elements have only their selected rows (slices along the
leading dim) scaled by the progressive schedule (index_select / index_copy_); other entries go
through multi-tensor calls."""


def _in_blocks(q: ParamPlan, x: Tensor) -> bool:
    """Whether ``x`` is taken in two passes of its own (statistics, then the step with its cross
    terms): a conv or linear weight (2 or more dims), contiguous, float32 or float64, grouped
    along its output channels (dim 0), its input channels (dim 1) or both, and then either the
    fused loops of ``_kernels`` take it (on the CPU, any size) or it is grouped along both and
    larger than a block (PyTorch calls on blocks of rows; for a smaller weight they would cost
    more than the memory traffic they save)."""
    if not (x.dim() >= 2 and x.dtype in BLAS and x.is_contiguous()):
        return False
    dims = {e.dim for e in q.entries}
    return (dims <= {0, 1} and x.numel() >= _kernels.MIN_NUMEL and _kernels.usable(x)
            or (dims == {0, 1} and x.numel() > BLOCK))


def _like(t: Tensor, x: Tensor) -> Tensor:
    """``t`` as a contiguous tensor of ``x``'s dtype (itself, nearly always)."""
    return t.to(x.dtype).contiguous()


def _fill_zero(t: Tensor, e: Entry, where: Tensor) -> None:
    """Zero the slices of ``t`` along ``e.dim`` that ``where`` gives (see ``DHSPG._locate``)."""
    if where.dtype == torch.int64:
        t.index_fill_(e.dim, where, 0)
    elif t.is_contiguous():  # one pass: the 0/1 vector spread over each slice's block
        t.view(e.pre, -1).mul_(where)
    else:
        t.mul_(where[:: e.post].view(e.view))


def _validate(*, owner: str, lr: float, start: int, start_name: str, end: int, variant: str, momentum: float, dampening: float,
              nesterov: bool, weight_decay: float, betas: tuple[float, float], eps: float, lmbda: float,
              amplify: float, coeff: float, epsilon: float) -> None:
    def bad(name: str, value: object, expected: str) -> OtonasError:
        return OtonasError(f"{owner}: {name}={value!r} is invalid; expected {expected}")

    if variant not in _VARIANTS:
        raise bad("variant", variant, "one of " + ", ".join(repr(v) for v in _VARIANTS))
    if not (isinstance(lr, (int, float)) and lr >= 0):
        raise bad("lr", lr, "a float >= 0")
    if start < 0:
        raise bad(start_name, start, "a step count >= 0")
    if end <= start:
        raise bad("end_step", end, f"a step after {start_name}={start} (the projection phase needs at least one step)")
    if momentum < 0:
        raise bad("momentum", momentum, "a float >= 0")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise bad("nesterov", nesterov, "momentum > 0 and dampening == 0 (as torch.optim.SGD)")
    if weight_decay < 0:
        raise bad("weight_decay", weight_decay, "a float >= 0")
    if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
        raise bad("betas", betas, "two floats in [0, 1)")
    if eps <= 0:
        raise bad("eps", eps, "a float > 0")
    if lmbda <= 0:
        raise bad("lmbda", lmbda, "a float > 0")
    if amplify < 1:
        raise bad("lmbda_amplify", amplify, "a float >= 1")
    if coeff < 1:
        raise bad("hat_lmbda_coeff", coeff, "a float >= 1 (the upper clip is hat_lmbda_coeff·lmbda)")
    if not 0.0 <= epsilon < 1.0:
        raise bad("epsilon", epsilon, "a float in [0, 1)")
