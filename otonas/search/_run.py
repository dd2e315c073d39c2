"""``otonas search``: train once with DHSPG/H2SPG, build, export, report; resumable."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sized
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader

from ..errors import OtonasError, UsageError
from ..optim import DEFAULT_LMBDA
from ..logging import get_logger
from ._data import DataSpec, load_data
from ._state import atomic_write_text, folder_lock, load_state, save_state

if TYPE_CHECKING:
    from ..analysis import Plan

__all__ = ["SearchConfig", "search", "prepare", "Prepared"]

logger = get_logger("otonas.search")
progress = get_logger("otonas.progress")  # the plain per-epoch lines where no progress bar is drawn


@dataclass
class SearchConfig:
    """Every option of a search; ``otonas search`` flags and ``--config`` TOML keys use these names."""

    out: str = "otonas-out"
    model: str = "search_spaces:darts"
    data: str = "digits"
    mode: str | None = None  # prune | erase | both; default: erase for supernets, prune otherwise
    optimizer: str | None = None  # dhspg | h2spg; default from the mode
    target_sparsity: float | dict[str, float] = 0.5  # or stage -> fraction (see otonas.analysis.group_stages)
    erase_budget: float = 0.5  # share of the erasing groups to erase
    # fraction of the dense FLOPs to keep: prune mode, by channels (replaces target_sparsity); erase
    # mode, by erasing operators (replaces erase_budget)
    target_flops: float | None = None
    target_params: float | None = None  # fraction of the dense parameters to keep (likewise)
    # fraction of the dense model's latency to keep, measured on this machine at latency_batch on
    # latency_device (estimated from a cached per-layer table; the built subnet is measured too)
    target_latency: float | None = None
    latency_batch: int = 1
    latency_device: str = "cpu"
    latency_threads: int | None = None  # CPU threads for the latency; default: torch's setting
    latency_memory_format: str = "contiguous"  # or channels_last: weights and inputs of both nets, and the table
    schedule: str = "progressive"  # progressive (groups shrunk to zero period by period) | half_space (OTOv2/v3)
    periods: int = 5  # periods of the progressive schedule
    round_to: int = 1  # every family keeps a multiple of round_to channels (or all of them); 8/16/32 suit kernels
    # redundancy score: norm_affine (-Σγ²+β² of the group's normalization layers, else -||x||²; within
    # families; default of --mode prune) | magnitude (-||x||²) | taylor (-|<x, d>|, default with erasure,
    # where operators of different kinds are compared) | cosine_magnitude (OTOv2)
    score: str | None = None
    epochs: int = 12
    batch_size: int = 64
    lr: float = 0.1
    lr_schedule: str = "cosine"  # cosine (to 0 at the last step) | constant
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lmbda: float = DEFAULT_LMBDA  # the optimizers' base λ (half_space schedule only), as their own default
    warmup_epochs: float | None = None  # default: 1/10 of the epochs (DHSPG), 1/6 (H2SPG)
    projection_epochs: float | None = None  # default: 1/5 (DHSPG), 1/4 (H2SPG); the rest trains the final structure
    device: str = "auto"
    seed: int = 0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    download: bool = False
    val_fraction: float = 0.2
    resume: bool = False
    overwrite: bool = False  # start anew in a folder that holds a run (removes otonas's own files there)
    export: bool = True
    progress: bool = True
    measure_latency: bool = False  # time the dense model and the subnet into report["latency"] (on with target_latency)

    def validate(self) -> None:
        if self.resume and self.overwrite:
            raise UsageError("give --resume (continue the run in --out) or --overwrite (start it anew), not both")
        if self.mode not in (None, "prune", "erase", "both"):
            raise UsageError(f"--mode {self.mode!r} is not one of prune, erase, both")
        if self.optimizer not in (None, "dhspg", "h2spg"):
            raise UsageError(f"--optimizer {self.optimizer!r} is not one of dhspg, h2spg")
        targets = (self.target_sparsity.items() if isinstance(self.target_sparsity, dict)
                   else [("", self.target_sparsity)])
        for stage, t in targets:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t < 1.0:
                where = f" for stage {stage!r}" if stage else ""
                raise UsageError(f"--target-sparsity {t!r}{where} must be a number in [0, 1), e.g. 0.5")
        if not 0.0 <= self.erase_budget < 1.0:
            raise UsageError(f"--erase-budget {self.erase_budget} must be in [0, 1), e.g. 0.5")
        for key in ("target_flops", "target_params", "target_latency"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not (isinstance(v, (int, float)) and 0.0 < v <= 1.0)):
                raise UsageError(f"--{key.replace('_', '-')} {v!r} must be the fraction to keep, in (0, 1], e.g. 0.5")
        given = [f"--{k.replace('_', '-')}" for k in ("target_flops", "target_params", "target_latency")
                 if getattr(self, k) is not None]
        if len(given) > 1:
            raise UsageError(f"give one of --target-flops, --target-params and --target-latency, not {' and '.join(given)}")
        if isinstance(self.latency_batch, bool) or not (isinstance(self.latency_batch, int) and self.latency_batch >= 1):
            raise UsageError(f"--latency-batch {self.latency_batch!r} must be an integer >= 1, e.g. 1")
        if self.latency_threads is not None and (isinstance(self.latency_threads, bool) or not (
                isinstance(self.latency_threads, int) and self.latency_threads >= 1)):
            raise UsageError(f"--latency-threads {self.latency_threads!r} must be an integer >= 1, e.g. 1 "
                             "(or leave it out for torch's setting)")
        if self.latency_memory_format not in ("contiguous", "channels_last"):
            raise UsageError(f"--latency-memory-format {self.latency_memory_format!r} is not one of contiguous, "
                             "channels_last")
        if self.latency_device not in ("cpu", "cuda") and not self.latency_device.startswith("cuda:"):
            raise UsageError(f"--latency-device {self.latency_device!r} is not one of cpu, cuda")
        if self.latency_device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError("--latency-device cuda was asked for but torch sees no CUDA device; use --latency-device cpu")
        if self.target_latency is not None and self.mode in ("erase", "both"):
            raise UsageError("--target-latency sets the channel budget of --mode prune (DHSPG); with operator erasure "
                             "give --erase-budget (and --target-sparsity) instead")
        if self.schedule not in ("progressive", "half_space"):
            raise UsageError(f"--schedule {self.schedule!r} is not one of progressive, half_space")
        if not (isinstance(self.periods, int) and self.periods >= 1):
            raise UsageError(f"--periods {self.periods!r} must be an integer >= 1, e.g. 5")
        if isinstance(self.round_to, bool) or not (isinstance(self.round_to, int) and self.round_to >= 1):
            raise UsageError(f"--round-to {self.round_to!r} must be an integer >= 1, e.g. 8")
        if self.round_to > 1 and self.schedule != "progressive" and self.mode in ("erase", "both"):
            raise UsageError("--round-to with operator erasure needs --schedule progressive")
        from ..optim import SCORES

        if self.score is not None and self.score not in SCORES:
            raise UsageError(f"--score {self.score!r} is not one of {', '.join(SCORES)}")
        if self.epochs < 1:
            raise UsageError(f"--epochs {self.epochs} must be at least 1")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size {self.batch_size} must be at least 1")
        if not self.lr > 0:
            raise UsageError(f"--lr {self.lr} must be positive")
        if self.lr_schedule not in ("cosine", "constant"):
            raise UsageError(f"--lr-schedule {self.lr_schedule!r} is not one of cosine, constant")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UsageError(f"--device {self.device!r} is not one of auto, cpu, cuda")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")


# --- model ----------------------------------------------------------------------------

def _make_model(cfg: SearchConfig, data: DataSpec) -> nn.Module:
    from ..models import resolve_model

    kwargs = dict(cfg.model_kwargs)
    if cfg.model.startswith("search_spaces:"):
        import search_spaces

        name = cfg.model.split(":", 1)[1]
        if name in search_spaces.list() and search_spaces.info(name).input_dtype.is_floating_point:
            kwargs.setdefault("num_classes", data.num_classes)
            kwargs.setdefault("in_chans", data.input_shape[0])
            if data.input_shape[-1] <= 16:
                kwargs.setdefault("size", "tiny")
    elif cfg.model.startswith("torchvision:"):
        kwargs.setdefault("num_classes", data.num_classes)
    return resolve_model(cfg.model, kwargs=kwargs).model


# constructor arguments that set a model's input channels, by the names libraries use
_CHANNEL_ARGS = ("in_chans", "in_channels", "input_channels", "num_channels", "in_ch", "channels")


def _channel_argument(spec: str) -> str | None:
    """The argument of MODEL's constructor that sets its input channels, where one is recognisable."""
    import inspect

    if spec.startswith(("torchvision:", "search_spaces:")):
        return None
    from ..models import user_callable

    try:
        names = inspect.signature(user_callable(spec)).parameters
    except (OtonasError, TypeError, ValueError):
        return None
    return next((n for n in _CHANNEL_ARGS if n in names), None)


def _check_fits(model: nn.Module, example: torch.Tensor, cfg: SearchConfig) -> None:
    """Run ``model`` on a batch of the data (eval mode, no grad): when it fails and the first
    layer it reached expects another number of input channels than the data has, say so and
    name the ``--model-kwargs`` that fixes it."""
    first: list[tuple[str, nn.Module, torch.Tensor]] = []
    layers: dict[nn.Module, str] = {m: n for n, m in model.named_modules()
                                    if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        if not first and args and isinstance(args[0], torch.Tensor):
            first.append((layers[module], module, args[0]))

    handles = [m.register_forward_pre_hook(hook) for m in layers]
    training = model.training
    shape = ",".join(map(str, example.shape))
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    except Exception as e:
        given = int(example.shape[1]) if example.dim() > 1 else None
        if first and given is not None:
            name, layer, x = first[0]
            expected = getattr(layer, "in_channels", None)
            if expected is None:
                expected = getattr(layer, "in_features", None)
                dim_given = int(x.shape[-1])
            else:
                dim_given = int(x.shape[1]) if x.dim() > 1 else given
            if expected is not None and dim_given != expected and x is example:
                arg = _channel_argument(cfg.model)
                fix = (f"pass --model-kwargs '{{\"{arg}\": {given}}}'" if arg else
                       f"pass the model's argument for its input channels, e.g. --model-kwargs "
                       f"'{{\"in_chans\": {given}}}' (whatever its constructor calls it), or use data with "
                       f"{expected} channels")
                raise UsageError(f"MODEL {cfg.model!r} does not fit --data {cfg.data!r}: the data has {given} input "
                                 f"channel(s) (a batch is {shape}), the model's first layer {name or '(root)'} "
                                 f"({type(layer).__name__}) expects {expected}; {fix}") from e
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UsageError(f"MODEL {cfg.model!r} fails on a batch of --data {cfg.data!r} (shape {shape}): "
                         f"{type(e).__name__}: {text}; check that the model's --model-kwargs fit the data "
                         "(input channels, classes, image size)") from e
    finally:
        model.train(training)
        for h in handles:
            h.remove()


def _is_supernet(cfg: SearchConfig) -> bool:
    if cfg.model.startswith("search_spaces:"):
        import search_spaces

        name = cfg.model.split(":", 1)[1]
        return name in search_spaces.list() and search_spaces.info(name).kind == "supernet"
    return False


# --- loop -----------------------------------------------------------------------------

def _loader(ds: Any, cfg: SearchConfig, epoch: int, train: bool) -> DataLoader:
    gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=train, generator=gen if train else None,
                      drop_last=False, num_workers=0)


@torch.no_grad()
def evaluate(model: nn.Module, ds: Any, cfg: SearchConfig, device: torch.device) -> tuple[float, float]:
    model.eval()
    correct, total, loss = 0, 0, 0.0
    for x, y in _loader(ds, cfg, 0, False):
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss += float(nn.functional.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1), loss / max(total, 1)


def _score_name(cfg: SearchConfig) -> str:
    """The redundancy score a run uses: ``cfg.score``, else norm_affine for DHSPG (channels compared
    within their family by their normalization's scale and shift) and taylor for H2SPG (operators of
    different kinds compared)."""
    if cfg.score is not None:
        return cfg.score
    within_cells = (cfg.schedule == "progressive" or cfg.round_to > 1 or cfg.target_flops is not None
                    or cfg.target_params is not None or cfg.target_latency is not None)
    return "norm_affine" if cfg.optimizer == "dhspg" and within_cells else "taylor"


def _make_optimizer(cfg: SearchConfig, space: Any, steps_per_epoch: int) -> Any:
    from .. import optim
    from ..optim import make_score

    total = cfg.epochs * steps_per_epoch
    # Measured (tiny ResNet-20, bench/bench_quality.py's grid, 5 seeds): a short warm-up and
    # projection leave the final structure more epochs to train, which matters more than a longer
    # look at the dense network. Fashion-MNIST at 25% FLOPs: 1/10 + 1/5 79.2 ± 0.4%, 1/6 + 1/4
    # 78.4 ± 1.8%; digits at 25%: 98.0 ± 0.2% against 97.2 ± 0.6% (earlier, 1/4 + 1/3: worse still).
    # Operator erasure (H2SPG) keeps 1/6 + 1/4: its selection averages the scores over the warm-up,
    # and on the default DARTS job 1/10 + 1/5 gave 95.8-98.6% over seeds 0-2 against 96.9-98.1%.
    short = cfg.optimizer == "dhspg"
    warm = cfg.warmup_epochs if cfg.warmup_epochs is not None else cfg.epochs / (10 if short else 6)
    proj = cfg.projection_epochs if cfg.projection_epochs is not None else cfg.epochs / (5 if short else 4)
    if total < 2:
        raise UsageError(f"{total} training step(s) is too short to train and project; raise --epochs")
    # warm-up, then projection, then the rest trains the survivors; each phase at least a step
    start = min(max(1, int(round(warm * steps_per_epoch))), total - 1)
    end = min(max(start + 1, int(round((warm + proj) * steps_per_epoch))), total)
    common: dict[str, Any] = dict(lr=cfg.lr, variant="sgd", momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                  lmbda=cfg.lmbda, schedule=cfg.schedule, periods=cfg.periods,
                                  score=make_score(_score_name(cfg)), round_to=cfg.round_to)
    cost = (dict(target_flops=cfg.target_flops) if cfg.target_flops is not None else
            dict(target_params=cfg.target_params) if cfg.target_params is not None else
            dict(target_latency=cfg.target_latency, latency_model=latency_model(cfg, space))
            if cfg.target_latency is not None and cfg.optimizer == "dhspg" else None)
    if cfg.optimizer == "dhspg":
        budget_kw: dict[str, Any] = cost if cost is not None else dict(target_group_sparsity=cfg.target_sparsity)
        return optim.DHSPG(space, warmup_steps=start, end_step=end, **budget_kw, **common)
    if cfg.target_latency is not None:
        raise UsageError("--target-latency sets the channel budget of --mode prune (DHSPG); with operator erasure "
                         "give --erase-budget or --target-flops instead")
    if cost is not None and cfg.mode != "erase":
        raise UsageError("--target-flops / --target-params with H2SPG are reached by erasing operators (--mode "
                         "erase); with --mode both give --erase-budget and --target-sparsity instead, or prune "
                         "channels to a FLOPs target with --mode prune")
    H2SPG = getattr(optim, "H2SPG", None)
    if H2SPG is None:
        raise OtonasError("the H2SPG optimizer (operator erasure) is not available in this version of otonas; "
                          "use --mode prune --optimizer dhspg")
    if cost is not None:  # erase operators until the supernet keeps at most that share of its FLOPs / params
        return H2SPG(space, warmup_steps=start, end_step=end, **cost, **common)
    sparsity = cfg.target_sparsity if cfg.mode in ("prune", "both") else 0.0
    budget = cfg.erase_budget if cfg.mode in ("erase", "both") else 0.0
    return H2SPG(space, target_group_sparsity=sparsity, erase_budget=budget, warmup_steps=start, end_step=end,
                 **common)


def latency_model(cfg: SearchConfig, space: Any) -> Any:
    """The latency model of a run's space at its latency setting (the table cached per machine)."""
    from ..latency import LatencyModel

    logger.info(f"latency table: batch {cfg.latency_batch} on {cfg.latency_device}, {cfg.latency_memory_format} "
                "(layers not in the cache are measured now)")
    return LatencyModel(space, batch=cfg.latency_batch, device=cfg.latency_device, num_threads=cfg.latency_threads,
                        memory_format=cfg.latency_memory_format)


def _set_lr(opt: Any, cfg: SearchConfig, step: int, total: int) -> None:
    """The learning rate of ``step``: constant, or cosine from ``cfg.lr`` down to 0 at the end."""
    lr = cfg.lr if cfg.lr_schedule == "constant" else cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
    for group in opt.param_groups:
        group["lr"] = lr


def _progress(total: int, desc: str, enabled: bool) -> Any:
    """A bar on a terminal; None elsewhere (a log, a pipe), where each epoch is one plain line."""
    if not enabled or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with optuna; without it, plain lines
        return None
    return tqdm(total=total, desc=desc, leave=True, file=sys.stderr, dynamic_ncols=True)


def _metrics(opt: Any) -> dict[str, Any]:
    try:
        return dict(opt.metrics())
    except Exception:  # a progress bar must never end a run
        return {}


# files otonas writes in a run folder; --overwrite removes these and nothing else
OWN_FILES = ("report.json", "report.html", "model.py", "model.safetensors", "architecture.json")


def _finished(out: str) -> str | None:
    """What shows that ``out`` holds a finished run (report.json, a checkpoint at its last epoch), or None."""
    if os.path.exists(os.path.join(out, "report.json")):
        return "report.json"
    try:
        with open(os.path.join(out, "checkpoint", "run.json")) as f:
            run = json.load(f)
        if int(run["epoch"]) >= int(run["config"]["epochs"]):
            return f"a checkpoint at its last epoch, {int(run['epoch'])}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _prepare_folder(cfg: SearchConfig) -> None:
    """Refuse to start anew over a finished run unless told to; ``overwrite`` clears the old
    run's checkpoint and outputs first (otonas's own files only: the user's stay)."""
    if cfg.overwrite:
        ckpt = os.path.join(cfg.out, "checkpoint")
        if os.path.isdir(ckpt) and not os.path.islink(ckpt):
            shutil.rmtree(ckpt)
        for name in OWN_FILES:
            path = os.path.join(cfg.out, name)
            if os.path.isfile(path) or os.path.islink(path):
                os.remove(path)
        return
    if cfg.resume:
        return
    done = _finished(cfg.out)
    if done:
        raise UsageError(f"{cfg.out} holds a finished run ({done}); pass --resume to rebuild its outputs from the "
                         "checkpoint, or --overwrite to start a new run there (removes otonas's files only)")
    run_json = os.path.join(cfg.out, "checkpoint", "run.json")
    if os.path.exists(run_json):
        try:
            with open(run_json) as f:
                run = json.load(f)
            where = f" (checkpoint at epoch {int(run['epoch'])} of {int(run['config']['epochs'])})"
        except (OSError, ValueError, KeyError, TypeError):
            where = ""
        raise UsageError(f"{cfg.out} holds an unfinished run{where}; pass --resume to continue it, or --overwrite "
                         "to start again (removes otonas's files only)")


def search(cfg: SearchConfig, *, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run a search to the end (or resume one) and write DIR: checkpoint/, the export,
    report.json and report.html. Returns the report.

    DIR is locked for the run (``DIR/.lock``: another process's search there raises
    ``otonas.errors.BusyError``, an ``OtonasError``); a DIR holding a finished run is refused
    unless ``cfg.resume`` (rebuild its outputs) or ``cfg.overwrite`` (start anew) is set.

    ``on_epoch`` is called with each epoch's history row (``epoch``, ``val_accuracy``,
    ``flops``, ...) after the epoch's checkpoint is written; an exception it raises (e.g.
    ``optuna.TrialPruned``) ends the search there, with the checkpoint kept."""
    cfg.validate()
    with folder_lock(cfg.out, "otonas search"):
        _prepare_folder(cfg)
        return _search(cfg, on_epoch)


@dataclass(frozen=True)
class Prepared:
    """What a search trains, made once by :func:`prepare` (``otonas search`` and ``otonas tune`` both use it)."""

    config: SearchConfig  # with ``mode`` and ``optimizer`` resolved
    data: DataSpec
    model: nn.Module  # on the CPU, freshly initialised with the config's seed
    example: torch.Tensor  # two training samples, the inputs the analysis captured
    space: Any  # the model's SearchSpace
    device: torch.device  # where the search trains


def prepare(cfg: SearchConfig) -> Prepared:
    """Seed, load the data, make the model, resolve the mode and optimizer, check that the model
    fits the data and analyse it. Raises :class:`~otonas.errors.UsageError` when the mode has
    nothing to work on (no prunable channels, no erasable operators). ``cfg`` is left as it is."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    data = load_data(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction, download=cfg.download)
    model = _make_model(cfg, data)
    mode = cfg.mode or ("erase" if _is_supernet(cfg) else "prune")
    optimizer = cfg.optimizer or ("dhspg" if mode == "prune" else "h2spg")
    cfg = replace(cfg, mode=mode, optimizer=optimizer)
    if cfg.optimizer == "dhspg" and cfg.mode != "prune":
        raise UsageError(f"--optimizer dhspg prunes channels only; --mode {cfg.mode} needs --optimizer h2spg")
    from ..analysis import analyze

    example = torch.stack([data.train[i][0] for i in range(2)])
    _check_fits(model, example, cfg)
    space = analyze(model, (example,))
    if cfg.mode in ("prune", "both") and space.num_prunable_groups == 0:
        raise UsageError(f"{cfg.model} has no prunable channels ({'; '.join(p.reason for p in space.pins[:3])}); "
                         "run `otonas analyze` to see why")
    if cfg.mode in ("erase", "both") and space.num_erasing_groups == 0:
        raise UsageError(f"{cfg.model} has no erasable operators; use --mode prune, or a supernet whose "
                         "candidate operators are summed or concatenated")
    return Prepared(cfg, data, model, example, space, device)


def _search(cfg: SearchConfig, on_epoch: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    os.makedirs(cfg.out, exist_ok=True)
    ckpt = os.path.join(cfg.out, "checkpoint")
    setup = prepare(cfg)
    cfg.mode, cfg.optimizer = setup.config.mode, setup.config.optimizer  # the report records what ran
    data, model, space, device = setup.data, setup.model, setup.space, setup.device
    model.to(device)
    steps_per_epoch = math.ceil(len(cast(Sized, data.train)) / cfg.batch_size)
    opt = _make_optimizer(cfg, space, steps_per_epoch)
    history: list[dict[str, Any]] = []
    start_epoch, elapsed = 0, 0.0
    if cfg.resume and os.path.exists(os.path.join(ckpt, "run.json")):
        start_epoch, history, elapsed = _load_checkpoint(ckpt, model, opt, cfg)
    elif cfg.resume:
        logger.info(f"no checkpoint in {ckpt}; starting from scratch")
    full_costs = space.costs()
    elapsed_box = [elapsed]
    try:
        _train(cfg, model, space, data, device, opt, history, start_epoch, elapsed_box, on_epoch, steps_per_epoch,
               full_costs)
    except BaseException as e:  # Ctrl-C, an error, a pruned trial: the finished epochs still get a report
        if history:
            _partial_report(cfg, history, space, e)
        raise
    return _finish(cfg, model, space, data, device, history, elapsed_box[0], opt)


def _partial_report(cfg: SearchConfig, history: list[dict[str, Any]], space: Any, error: BaseException) -> None:
    """report.html (marked partial) from the history of the finished epochs; no report.json,
    which marks a finished run. Never masks the exception that ended the run."""
    try:
        from ..report import write_report_html
    except ImportError:
        return
    try:  # the epochs the checkpoint holds: what --resume continues from
        with open(os.path.join(cfg.out, "checkpoint", "run.json")) as f:
            saved = list(json.load(f)["history"])
    except (OSError, ValueError, KeyError, TypeError):
        saved = []
    hint = ("Continue with: otonas search --resume --out " + shlex.quote(cfg.out) if saved else
            "No checkpoint was saved, so there is nothing to resume.")
    history = saved or history
    last = history[-1]
    why = ("it was interrupted" if isinstance(error, KeyboardInterrupt) else
           f"it stopped on {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}")
    before = space.costs()
    report = {"model": cfg.model, "data": cfg.data, "mode": cfg.mode, "optimizer": cfg.optimizer,
              "status": "partial", "epochs_finished": int(last["epoch"]),
              "params_before": before.params, "params_after": last.get("params"),
              "flops_before": before.flops, "flops_after": last.get("flops"),
              "group_sparsity": last.get("group_sparsity"), "prunable_groups": space.num_prunable_groups,
              "removed_groups": last.get("removed_groups"),
              "erased_operators": int(last.get("erased_ops") or 0), "erasing_groups": space.num_erasing_groups,
              "epochs": cfg.epochs, "seconds": sum(float(h.get("seconds") or 0.0) for h in history),
              "config": asdict(cfg)}
    text = (f"The run stopped after epoch {int(last['epoch'])} of {cfg.epochs}: {why}. The figures are those of "
            f"epoch {int(last['epoch'])} (FLOPs and parameters as the zero groups then would leave them; no subnet "
            f"was built or exported yet). {hint}")
    try:
        write_report_html(os.path.join(cfg.out, "report.html"), report=report, history=history, partial=text)
    except OSError:  # the disk that ended the run, most likely: its error says so
        pass
    except Exception as e:  # the report must never hide why the run ended
        logger.warning(f"could not write the partial report: {type(e).__name__}: {e}")


def _train(cfg: SearchConfig, model: nn.Module, space: Any, data: DataSpec, device: torch.device, opt: Any,
           history: list[dict[str, Any]], start_epoch: int, elapsed_box: list[float],
           on_epoch: Callable[[dict[str, Any]], None] | None, steps_per_epoch: int, full_costs: Any) -> None:
    """The epochs from ``start_epoch``: train, evaluate, append to ``history``, checkpoint."""
    elapsed = elapsed_box[0]
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        model.train()
        bar = _progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress)
        aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        loss_sum, correct, seen = 0.0, 0, 0
        sparsity_now, erased_now = 0.0, 0
        for i, (x, y) in enumerate(_loader(data.train, cfg, epoch, True)):
            _set_lr(opt, cfg, epoch * steps_per_epoch + i, cfg.epochs * steps_per_epoch)
            if data.augment is not None:
                x = data.augment(x, aug_gen)
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((out.argmax(1) == y).sum())
            seen += len(y)
            if bar is not None and not bar.disable:
                bar.update(1)
                if i % 10 == 0:  # the optimizer's metrics read every group: not at every step
                    m = _metrics(opt)
                    sparsity_now, erased_now = m.get("group_sparsity", 0.0), m.get("erased_groups", 0)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                                sparsity=f"{sparsity_now:.2f}", erased=erased_now, refresh=False)
        val_acc, val_loss = evaluate(model, data.val, cfg, device)
        plan = space.plan()  # what the subnet would be after this epoch
        costs = plan.after
        row = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
               "val_accuracy": val_acc, "val_loss": val_loss,
               "group_sparsity": plan.group_sparsity, "removed_groups": plan.removed_groups,
               "erased_ops": len(plan.erased_groups),
               "flops": costs.flops, "params": costs.params, "lr": float(opt.param_groups[0]["lr"]),
               "seconds": time.time() - t0}
        history.append(row)
        if bar is not None:
            bar.set_postfix(loss=f"{row['loss']:.3f}", val_acc=f"{val_acc:.3f}",
                            sparsity=f"{row['group_sparsity']:.2f}", erased=row["erased_ops"],
                            flops=f"{costs.flops / max(full_costs.flops, 1):.0%}")
            bar.close()
        elif cfg.progress:
            erasing = f", erased {row['erased_ops']}" if cfg.mode != "prune" else ""
            progress.info(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.3f}, val acc {val_acc:.3f}, "
                          f"FLOPs kept {costs.flops / max(full_costs.flops, 1):.1%}{erasing}")
        elapsed += time.time() - t0
        elapsed_box[0] = elapsed
        _save_checkpoint(os.path.join(cfg.out, "checkpoint"), model, opt, cfg, epoch + 1, history, elapsed)
        if on_epoch is not None:
            on_epoch(dict(row))


def _save_checkpoint(ckpt: str, model: nn.Module, opt: Any, cfg: SearchConfig, epoch: int,
                     history: list[dict[str, Any]], elapsed: float) -> None:
    """Each epoch writes its own folder; ``run.json`` (replaced atomically, last) points at
    it, so an interruption at any moment leaves a consistent checkpoint behind."""
    folder = f"epoch-{epoch:04d}"
    d = os.path.join(ckpt, folder)
    os.makedirs(d, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(d, "model.safetensors"))
    save_state(opt.state_dict(), os.path.join(d, "optimizer"))
    save_state({"torch_rng": torch.get_rng_state()}, os.path.join(d, "rng"))
    atomic_write_text(os.path.join(ckpt, "run.json"), json.dumps(
        {"epoch": epoch, "folder": folder, "history": history, "elapsed": elapsed, "config": asdict(cfg)}, indent=1))
    for old in os.listdir(ckpt):
        if old.startswith("epoch-") and old != folder:
            import shutil

            shutil.rmtree(os.path.join(ckpt, old), ignore_errors=True)


def _load_checkpoint(ckpt: str, model: nn.Module, opt: Any, cfg: SearchConfig) -> tuple[int, list[Any], float]:
    try:
        with open(os.path.join(ckpt, "run.json")) as f:
            run = json.load(f)
        saved = run["config"]
        for key in ("model", "data", "mode", "optimizer", "seed", "epochs", "batch_size"):
            if saved.get(key) != getattr(cfg, key):
                raise UsageError(f"cannot resume: the checkpoint in {ckpt} was made with {key}={saved.get(key)!r}, "
                                 f"this run has {key}={getattr(cfg, key)!r}; use the same options or another --out")
        d = os.path.join(ckpt, run["folder"])
        state = load_file(os.path.join(d, "model.safetensors"))
        missing = set(model.state_dict()) - set(state)
        if missing:
            raise OtonasError(f"checkpoint {d}/model.safetensors lacks {sorted(missing)[0]}")
        model.load_state_dict(state)
        opt.load_state_dict(load_state(os.path.join(d, "optimizer")))
        torch.set_rng_state(load_state(os.path.join(d, "rng"))["torch_rng"])
        return int(run["epoch"]), list(run["history"]), float(run.get("elapsed", 0.0))
    except UsageError:
        raise
    except OtonasError as e:
        raise OtonasError(f"the checkpoint in {ckpt} is corrupt: {e}; delete the folder to start again") from None
    except Exception as e:
        raise OtonasError(f"the checkpoint in {ckpt} is corrupt ({type(e).__name__}: {e}); "
                          "delete the folder to start again") from None


def _latency(cfg: SearchConfig, model: nn.Module, subnet: nn.Module, estimate: Any, space: Any,
             plan: Plan) -> dict[str, Any]:
    """The dense model and the built subnet timed in turn (medians) at the run's latency
    setting, beside the latency model's estimate (of a run with ``target_latency``)."""
    import copy

    from ..latency import batched_inputs, measure_latency

    device = torch.device(cfg.latency_device)
    nets = [copy.deepcopy(m).to(device).eval() for m in (model, subnet)]
    inputs = batched_inputs(space.capture.example_inputs, cfg.latency_batch, device, torch.float32)
    dense_s, subnet_s = measure_latency(nets, inputs, repeats=10 if cfg.latency_batch < 8 else 5,
                                        num_threads=cfg.latency_threads, memory_format=cfg.latency_memory_format)
    out: dict[str, Any] = {"batch": cfg.latency_batch, "device": str(device),
                           "memory_format": cfg.latency_memory_format,
                           "threads": cfg.latency_threads or torch.get_num_threads(),
                           "dense_seconds": dense_s, "subnet_seconds": subnet_s,
                           "measured_fraction": subnet_s / dense_s if dense_s > 0 else None,
                           "target": cfg.target_latency, "estimated_fraction": None}
    if estimate is not None:
        out["estimated_fraction"] = float(estimate.fraction(plan.removed, plan.erased))
        out["estimated_dense_seconds"] = float(estimate.dense_seconds)
        out["table"] = estimate.table.path
    return out


def _finish(cfg: SearchConfig, model: nn.Module, space: Any, data: DataSpec, device: torch.device,
            history: list[dict[str, Any]], elapsed: float, opt: Any) -> dict[str, Any]:
    from ..build import build

    t0 = time.time()
    acc_full, _ = evaluate(model, data.val, cfg, device)
    model.cpu()
    plan = space.plan()  # the one removal decision: the build, export, latency and report all take it
    subnet = build(space, plan)
    acc_sub, _ = evaluate(subnet, data.val, cfg, torch.device("cpu"))
    max_diff = 0.0
    with torch.no_grad():
        model.eval()
        for x, _ in _loader(data.val, cfg, 0, False):
            max_diff = max(max_diff, float((model(x) - subnet(x)).abs().max()))
    before, after = plan.before, plan.after
    latency = (_latency(cfg, model, subnet, getattr(opt, "latency_model", None), space, plan)
               if cfg.target_latency is not None or cfg.measure_latency else None)
    report = {
        "model": cfg.model, "data": cfg.data, "mode": cfg.mode, "optimizer": cfg.optimizer,
        "accuracy_full": acc_full, "accuracy_subnet": acc_sub,
        "params_before": before.params, "params_after": after.params,
        "flops_before": before.flops, "flops_after": after.flops,
        "group_sparsity": plan.group_sparsity, "removed_groups": plan.removed_groups,
        "erased_operators": [space.erasing_groups[i].module or space.erasing_groups[i].output
                             for i in plan.erased_groups],
        "erasing_groups": space.num_erasing_groups, "prunable_groups": space.num_prunable_groups,
        "max_abs_diff": max_diff, "epochs": cfg.epochs, "seed": cfg.seed,
        "flops_kept": after.flops / max(before.flops, 1), "params_kept": after.params / max(before.params, 1),
        "schedule": cfg.schedule, "score": _score_name(cfg), "round_to": cfg.round_to, "forced_groups": int(_metrics(opt).get("num_forced_groups", 0) or 0),
        "latency_ms": 1e3 * latency["subnet_seconds"] if latency is not None else None,
        "latency": latency,
        "seconds": elapsed + (time.time() - t0),
        "config": asdict(cfg),
    }
    model.to(device)
    if cfg.export:
        try:
            from ..export import export
        except ImportError:
            export = None  # type: ignore[assignment]  # the export package is optional
        if export is not None:
            export(space, cfg.out, plan=plan, subnet=subnet,
                   architecture={"command": " ".join(sys.argv), "config": asdict(cfg)})
    atomic_write_text(os.path.join(cfg.out, "report.json"), json.dumps(report, indent=1))
    try:
        from ..report import write_report_html
    except ImportError:
        write_report_html = None  # type: ignore[assignment]  # the report package is optional
    if write_report_html is not None:
        write_report_html(os.path.join(cfg.out, "report.html"), report=report, history=history, space=space,
                          plan=plan)
    return report
