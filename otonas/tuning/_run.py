"""``otonas tune``: Optuna searches the budgets; each trial is a short ``otonas search``.

Resumable and shared: the study lives in an Optuna RDB storage (SQLite file by default,
PostgreSQL for several machines). Each process is a *worker* with its own output folder;
``--trials N`` is the number of finished trials that worker contributes, so the same command
run again continues where it stopped, and two workers on one study add up.

A trial whose process died (killed, machine lost) is left RUNNING in the storage. Optuna's
heartbeat tells the next worker: once the trial's beat is older than ``stale_after`` seconds
(at once when its owner was on this host and its process is gone) the trial is failed and a
retry with the same budgets is queued (see ``_study.py``); the retry takes over the trial's
folder and resumes it from the checkpoint when that is in its own folder. No trial is lost
and none is run twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from ..errors import OtonasError, UsageError
from ..logging import get_logger
from ..search import atomic_write_text
from ._budgets import BudgetSpace, group_stages
from ._pruner import BudgetAwareMedianPruner, budget_params
from ._study import ATTR, TrialReports, fail_dead_here, mask, open_study, requeue, retried_from, worker_attrs

__all__ = ["TuneConfig", "tune", "export_best", "pareto_front", "format_front", "OBJECTIVES"]

OBJECTIVES = ("accuracy", "flops", "params", "latency")
_COST_KEY = {"flops": "flops_after", "params": "params_after", "latency": "latency_ms"}
logger = get_logger("otonas.tuning")


@dataclass
class TuneConfig:
    """Every option of ``otonas tune``; flags and ``--config`` TOML keys use these names.
    ``search`` holds options passed through to each trial's :class:`~otonas.search.SearchConfig`
    (``lr``, ``batch_size``, ``lmbda``, ``mode``, ...)."""

    out: str = "otonas-tune"
    model: str = "search_spaces:darts"
    data: str = "digits"
    trials: int = 10
    storage: str | None = None  # default sqlite:///OUT/study.db
    study: str = "otonas"
    objectives: str = "accuracy,flops"
    space: str | dict[str, Any] | None = None  # budgets TOML path or the same as a table
    trial_epochs: int = 4
    epochs: int = 12  # of the full search run by export_best
    pruner: str = "median"  # median | none
    sampler: str | None = None  # nsga2 | tpe | random; default nsga2 for 2 objectives, tpe for 1
    seed: int = 0
    stale_after: float = 300.0  # seconds without a heartbeat before a trial is failed and retried
    startup_trials: int = 3  # the median pruner waits for this many finished comparable trials
    warmup_epochs: int = 1  # ... and prunes nothing before this epoch
    search: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    def objective_list(self) -> list[str]:
        objs = [o.strip() for o in self.objectives.split(",") if o.strip()]
        if not objs or objs[0] != "accuracy" or len(objs) > 2 or any(o not in OBJECTIVES for o in objs):
            raise UsageError(f"--objectives {self.objectives!r}: give accuracy, or accuracy and one cost "
                             "(accuracy,flops / accuracy,params / accuracy,latency)")
        return objs

    def validate(self) -> None:
        self.objective_list()
        if self.trials < 0:
            raise UsageError(f"--trials {self.trials} must be 0 or more")
        if self.trial_epochs < 1 or self.epochs < 1:
            raise UsageError("--trial-epochs and --epochs must be at least 1")
        if self.pruner not in ("median", "none"):
            raise UsageError(f"--pruner {self.pruner!r} is not one of median, none")
        if self.sampler not in (None, "nsga2", "tpe", "random"):
            raise UsageError(f"--sampler {self.sampler!r} is not one of nsga2, tpe, random")
        from ..search import SearchConfig

        known = {f.name for f in dataclasses.fields(SearchConfig)}
        owned = {"out", "model", "data", "epochs", "target_sparsity", "erase_budget", "target_flops", "target_params",
                 "target_latency", "resume", "seed"}
        for key in self.search:
            if key not in known:
                raise UsageError(f"[search] option {key!r} is not a search option; known: "
                                 f"{', '.join(sorted(known - owned))}")
            if key in owned:
                raise UsageError(f"[search] option {key!r} is set by tune itself; use the tune option instead")

    def budget_space(self) -> BudgetSpace:
        if self.space is None:
            return BudgetSpace()
        if isinstance(self.space, Mapping):
            return BudgetSpace.from_dict(self.space, "[space]")
        return BudgetSpace.load(self.space)

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{os.path.abspath(os.path.join(self.out, 'study.db'))}"


# --- workers, heartbeats, stale trials ----------------------------------------------------

@contextlib.contextmanager
def _worker_lock(out: str) -> Iterator[str]:
    """Hold DIR/.lock for the run and yield this folder's worker id (made on first use)."""
    os.makedirs(out, exist_ok=True)
    f = open(os.path.join(out, ".lock"), "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise UsageError(f"another otonas tune is running with --out {out}; give each process "
                                 "its own --out (they can share --storage and --study)") from None
            raise
        path = os.path.join(out, "worker.json")
        try:
            with open(path) as wf:
                worker = str(json.load(wf)["worker"])
        except (FileNotFoundError, KeyError, json.JSONDecodeError):
            worker = uuid.uuid4().hex[:12]
            atomic_write_text(path, json.dumps({"worker": worker, "host": socket.gethostname()}))
        yield worker
    finally:
        f.close()


# --- the study -----------------------------------------------------------------------------

def _model_info(cfg: TuneConfig) -> dict[str, Any]:
    """Analyse the model once: full costs, stages, whether it prunes/erases by default."""
    from ..search import SearchConfig, prepare

    setup = prepare(SearchConfig(model=cfg.model, data=cfg.data, seed=cfg.seed, **cfg.search))
    space, mode = setup.space, setup.config.mode
    full = space.costs()
    stages = group_stages(space) if space.num_prunable_groups else {}
    # the most a budget may ask for while every family keeps a channel (DHSPG refuses more)
    family = list(getattr(space, "group_family", None) or range(space.num_prunable_groups))
    n = max(space.num_prunable_groups, 1)
    limits = {"*": (n - len(set(family))) / n}
    for name, members in stages.items():
        limits[name] = (len(members) - len({family[g] for g in members})) / max(len(members), 1)
    return {"mode": mode, "stages": stages, "limits": limits,
            "flops": int(full.flops), "params": int(full.params),
            "prunable_groups": space.num_prunable_groups, "erasing_groups": space.num_erasing_groups}


def _sampler(cfg: TuneConfig, objs: list[str], worker: str, n_seed: int) -> Any:
    kind = cfg.sampler or ("nsga2" if len(objs) > 1 else "tpe")
    # Each worker and each restart draws its own random stream: two machines with one seed
    # would otherwise propose the same budgets.
    seed = (cfg.seed * 1_000_003 + int(worker, 16) + 7919 * n_seed) % 2**32
    return {"nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
            "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed)}[kind]()


def _check_study(study: Any, cfg: TuneConfig, objs: list[str], space: BudgetSpace) -> None:
    """The first worker records what the study is; later ones must agree with it."""
    mine = {"objectives": objs, "model": cfg.model, "data": cfg.data, "space": space.to_dict(),
            "trial_epochs": cfg.trial_epochs}
    key = f"{ATTR}:setup"
    have = study.user_attrs.get(key)
    if have is None:
        study.set_user_attr(key, mine)
        return
    for k, v in mine.items():
        if have.get(k) != v:
            raise UsageError(f"study {cfg.study!r} was started with {k}={have.get(k)!r}, this command has "
                             f"{k}={v!r}; use the same options, or a new --study")


def _mine_finished(study: Any, worker: str) -> int:
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(1 for t in study.get_trials(deepcopy=False, states=done)
               if t.user_attrs.get(f"{ATTR}:worker") == worker)


def _trial_config(cfg: TuneConfig, info: dict[str, Any], sparsity: Any, erase: float, out: str,
                  epochs: int, *, export: bool, latency: bool, cost: Mapping[str, float] | None = None) -> Any:
    from ..search import SearchConfig

    return SearchConfig(**{**cfg.search, "out": out, "model": cfg.model, "data": cfg.data, "epochs": epochs,
                           "seed": cfg.seed, "mode": info["mode"], "target_sparsity": sparsity,
                           **(cost or {}), "erase_budget": erase, "export": export, "measure_latency": latency,
                           "resume": os.path.exists(os.path.join(out, "checkpoint", "run.json")),
                           "progress": cfg.progress and cfg.search.get("progress", True)})


def _cost_of(params: Mapping[str, Any], info: dict[str, Any]) -> dict[str, float] | None:
    """The search budget of a trial that drew the fraction of FLOPs or latency to keep (a
    ``flops`` or ``latency`` budget range): ``{"target_flops": F}`` or ``{"target_latency": F}``."""
    if info["mode"] == "erase" and "flops" in params:  # operators erased to that share of the FLOPs
        return {"target_flops": float(params["flops"])}
    if info["mode"] != "prune":
        return None
    for key in ("flops", "latency"):
        if key in params:
            return {f"target_{key}": float(params[key])}
    return None


def _budgets_of(params: Mapping[str, Any], info: dict[str, Any]) -> tuple[Any, float]:
    """The (sparsity, erase budget) a trial's parameters stand for."""
    prune = info["mode"] in ("prune", "both")
    if not prune:
        sparsity: Any = 0.0
    elif any(k.startswith("sparsity:") for k in params):
        sparsity = {k.split(":", 1)[1]: float(v) for k, v in params.items() if k.startswith("sparsity:")}
    else:
        sparsity = float(params.get("sparsity", 0.0))
    return sparsity, float(params.get("erase", 0.0))


def _trial_folder(out: str, number: int, retries: Sequence[int]) -> str:
    """``OUT/trials/trial-NUMBER``; a retried trial takes over the folder (and checkpoint) of the
    last trial it retries that ran in this worker's folder."""
    folder = os.path.join(out, "trials", f"trial-{number:04d}")
    for old in reversed(retries):
        previous = os.path.join(out, "trials", f"trial-{old:04d}")
        if not os.path.exists(folder) and os.path.isdir(os.path.join(previous, "checkpoint")):
            os.replace(previous, folder)
    return folder


def _run_trial(cfg: TuneConfig, study: optuna.Study, storage: optuna.storages.BaseStorage, trial: optuna.Trial,
               objs: list[str], space: BudgetSpace, info: dict[str, Any]) -> list[float]:
    from ..search import search

    prune_dim = info["mode"] in ("prune", "both")
    erase_dim = info["mode"] in ("erase", "both")
    space.suggest(trial, prune=prune_dim, erase=erase_dim, stages=info["stages"], limits=info["limits"])
    sparsity, erase = _budgets_of(trial.params, info)
    reports = TrialReports(study, storage, trial)
    out = _trial_folder(cfg.out, trial.number, retried_from(reports.frozen()))
    scfg = _trial_config(cfg, info, sparsity, erase, out, cfg.trial_epochs, export=False,
                         cost=_cost_of(trial.params, info),
                         latency="latency" in objs)

    def record(row: dict[str, Any]) -> int:
        step = int(row["epoch"]) - 1
        reports.report(float(row["val_accuracy"]), step)
        return step

    def on_epoch(row: dict[str, Any]) -> None:
        step = record(row)
        if reports.should_prune():
            raise optuna.TrialPruned(f"val accuracy {row['val_accuracy']:.4f} at epoch {step + 1} is below the "
                                     "median of trials that remove at least as much")

    # A process killed between an epoch's checkpoint and its report leaves that epoch
    # unreported; the resumed search starts after it, so report the checkpoint's history first.
    ckpt = os.path.join(out, "checkpoint", "run.json")
    if os.path.exists(ckpt):
        with contextlib.suppress(OSError, ValueError, KeyError):
            with open(ckpt) as f:
                for row in json.load(f)["history"]:
                    record(row)
    report = search(scfg, on_epoch=on_epoch)
    for k in ("accuracy_subnet", "accuracy_full", "flops_after", "params_after", "group_sparsity",
              "max_abs_diff", "seconds", "latency_ms"):
        if report.get(k) is not None:
            trial.set_user_attr(f"{ATTR}:{k}", report[k])
    trial.set_user_attr(f"{ATTR}:erased", len(report["erased_operators"]))
    values = [float(report["accuracy_subnet"])]
    for o in objs[1:]:
        values.append(float(report[_COST_KEY[o]]))
    return values


class _Objective:
    """One trial of ``study.optimize``: stamps the trial with its worker, runs it, and keeps
    what the loop reports about it (its number, the error that ended it)."""

    def __init__(self, cfg: TuneConfig, storage: optuna.storages.BaseStorage, objs: list[str], space: BudgetSpace,
                 info: dict[str, Any], worker: str, ordinal: int) -> None:
        self.cfg, self.storage, self.objs, self.space, self.info = cfg, storage, objs, space, info
        self.worker, self.ordinal = worker, ordinal
        self.number: int | None = None
        self.error: BaseException | None = None
        self.t0 = time.time()

    def __call__(self, trial: optuna.Trial) -> list[float]:
        self.number, self.t0 = trial.number, time.time()
        for k, v in worker_attrs(self.worker, self.cfg.out):
            trial.set_user_attr(f"{ATTR}:{k}", v)
        logger.info(f"trial {trial.number} ({self.ordinal}/{self.cfg.trials} of this worker) starts")
        try:
            return _run_trial(self.cfg, trial.study, self.storage, trial, self.objs, self.space, self.info)
        except BaseException as e:
            self.error = e
            raise


@contextlib.contextmanager
def _optuna_verbosity(level: int) -> Iterator[None]:
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(level)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def tune(cfg: TuneConfig | None = None, /, **options: Any) -> dict[str, Any]:
    """Run (or continue) the study until this worker has contributed ``cfg.trials`` finished
    trials; write ``pareto.json``, ``pareto.png`` and ``pareto.html`` to ``cfg.out``. Returns
    the contents of ``pareto.json``.

    Pass a :class:`TuneConfig`, or its fields as keywords: ``otonas.tune(model=..., trials=20)``."""
    if cfg is None:
        try:
            cfg = TuneConfig(**options)
        except TypeError as e:
            raise UsageError(f"otonas.tune: {e}; the options are TuneConfig's fields") from None
    elif options:
        cfg = dataclasses.replace(cfg, **options)

    cfg.validate()
    objs = cfg.objective_list()
    space = cfg.budget_space()
    with _worker_lock(cfg.out) as worker, _optuna_verbosity(optuna.logging.WARNING):
        info = _model_info(cfg)  # refuses a model with nothing to prune or erase in this mode
        if space.latency is not None and info["mode"] != "prune":
            raise UsageError(f"a latency budget range needs --mode prune (this study's mode is {info['mode']}); "
                             "with operator erasure use a flops range (--mode erase) or sparsity and erase ranges")
        if space.flops is not None and info["mode"] == "both":
            raise UsageError("a flops budget range needs --mode prune (channels) or --mode erase (operators); with "
                             "--mode both use sparsity and erase ranges")
        if space.per == "stage":
            if info["mode"] != "prune":
                raise UsageError(f"per = \"stage\" budgets need mode prune (this run's mode is {info['mode']}): "
                                 "per-stage targets are a DHSPG feature; use per = \"global\"")
            space.check_stages(info["stages"])
        pruner = (BudgetAwareMedianPruner(cfg.startup_trials, cfg.warmup_epochs) if cfg.pruner == "median"
                  else optuna.pruners.NopPruner())
        study, storage = open_study(cfg.storage_url(), cfg.study, len(objs), stale_after=cfg.stale_after,
                                    pruner=pruner)
        study.sampler = _sampler(cfg, objs, worker, len(study.trials))
        _check_study(study, cfg, objs, space)
        fail_dead_here(study)
        done = _mine_finished(study, worker)
        if done >= cfg.trials:
            logger.info(f"this worker ({cfg.out}) already has {done} finished trial(s) in study {cfg.study!r}; "
                        f"raise --trials above {done} to run more")
        failures = 0
        while done < cfg.trials:
            run = _Objective(cfg, storage, objs, space, info, worker, done + 1)
            finished: list[optuna.trial.FrozenTrial] = []
            try:
                # Optuna beats for the trial, and first fails (and retries) trials whose beat stopped;
                # a failed trial is told here in one line, not with Optuna's traceback
                with _optuna_verbosity(optuna.logging.ERROR):
                    study.optimize(run, n_trials=1, catch=(Exception,), callbacks=[lambda s, t: finished.append(t)])
            except KeyboardInterrupt:
                # Optuna marks the trial failed; queue it again so that the same command resumes it
                if run.number is not None:
                    requeue(study, run.number, "was interrupted")
                raise
            if not finished:  # SystemExit and the like: Optuna left the trial running
                continue
            trial = finished[0]
            seconds = time.time() - run.t0
            if trial.state == optuna.trial.TrialState.PRUNED:
                logger.info(f"trial {trial.number} pruned: {run.error} ({seconds:.0f} s)")
                done += 1
                failures = 0
            elif trial.state == optuna.trial.TrialState.FAIL:
                failures += 1
                err = run.error
                what = f"{type(err).__name__}: {err}" if err is not None else "the objective returned no values"
                logger.info(f"trial {trial.number} failed: {what}")
                if failures >= 3:
                    raise OtonasError(f"3 trials in a row failed; the last: {what}") from err
            else:
                done += 1
                failures = 0
                logger.info(f"trial {trial.number} done: " + ", ".join(
                    f"{o} {v:.4g}" for o, v in zip(objs, trial.values or [])) + f" ({seconds:.0f} s)")
            _drop_checkpoint(cfg.out, trial.number)
        result = pareto_front(study, objs, info)
        result["study"], result["storage"] = cfg.study, mask(cfg.storage_url())
        atomic_write_text(os.path.join(cfg.out, "pareto.json"), json.dumps(result, indent=1))
        from ._plot import write_pareto_html, write_pareto_png

        write_pareto_png(os.path.join(cfg.out, "pareto.png"), result)
        write_pareto_html(os.path.join(cfg.out, "pareto.html"), result)
        return result

def _drop_checkpoint(out: str, number: int) -> None:
    import shutil

    shutil.rmtree(os.path.join(out, "trials", f"trial-{number:04d}", "checkpoint"), ignore_errors=True)


def _trial_row(t: Any, objs: list[str], info: dict[str, Any]) -> dict[str, Any]:
    attrs = t.user_attrs
    row: dict[str, Any] = {"trial": t.number, "state": t.state.name.lower(),
                           "budgets": budget_params(t.params)}
    retries = retried_from(t)
    if retries:  # a retry of a trial whose process was lost: the number of the first one
        row["retry_of"] = retries[0]
    if t.values is not None:
        row["accuracy"] = float(t.values[0])
        for o, v in zip(objs[1:], t.values[1:]):
            row[o] = float(v)
    for k in ("flops_after", "params_after", "latency_ms", "group_sparsity", "erased", "seconds"):
        if f"{ATTR}:{k}" in attrs:
            row[k.removesuffix("_after")] = attrs[f"{ATTR}:{k}"]
    if "flops" in row:
        row["flops_ratio"] = row["flops"] / max(info["flops"], 1)
    if "params" in row:
        row["params_ratio"] = row["params"] / max(info["params"], 1)
    row["epochs"] = {str(k + 1): v for k, v in sorted(t.intermediate_values.items())}
    return row


def pareto_front(study: Any, objs: Sequence[str], info: Mapping[str, Any]) -> dict[str, Any]:
    """Every finished trial and the Pareto front (accuracy up, cost down), as plain data."""

    objs = list(objs)
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                      optuna.trial.TrialState.PRUNED,
                                                      optuna.trial.TrialState.FAIL))
    rows = [_trial_row(t, objs, dict(info)) for t in trials]
    complete = [r for r in rows if r["state"] == "complete"]
    if len(objs) == 1:
        front = sorted(complete, key=lambda r: -r["accuracy"])[:1]
    else:
        c = objs[1]
        front = [r for r in complete
                 if not any(o["accuracy"] >= r["accuracy"] and o[c] <= r[c]
                            and (o["accuracy"] > r["accuracy"] or o[c] < r[c]) for o in complete)]
        front.sort(key=lambda r: r[c])
    return {"objectives": objs, "directions": ["maximize"] + ["minimize"] * (len(objs) - 1),
            "full": {"flops": info["flops"], "params": info["params"]}, "mode": info["mode"],
            "front": [r["trial"] for r in front], "trials": rows,
            "counts": {s: sum(1 for r in rows if r["state"] == s) for s in ("complete", "pruned", "fail")}}


def format_front(result: Mapping[str, Any]) -> str:
    """The Pareto front as a terminal table."""
    objs = result["objectives"]
    by = {r["trial"]: r for r in result["trials"]}
    rows = [by[n] for n in result["front"]]
    keys = sorted({k for r in rows for k in r["budgets"]})
    head = ["trial", *keys, "accuracy", "FLOPs", "FLOPs %", "params", *(["latency ms"] if "latency" in objs else [])]
    lines = [head]
    for r in rows:
        lines.append([str(r["trial"]), *(f"{r['budgets'].get(k, 0):.3f}" for k in keys), f"{r['accuracy']:.4f}",
                      f"{r.get('flops', 0):,}", f"{100 * r.get('flops_ratio', 0):.1f}", f"{r.get('params', 0):,}",
                      *([f"{r.get('latency_ms', float('nan')):.3f}"] if "latency" in objs else [])])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    c = result["counts"]
    out.append(f"{len(rows)} trial(s) on the front; study has {c['complete']} complete, {c['pruned']} pruned, "
               f"{c['fail']} failed")
    return "\n".join(out)


def export_best(cfg: TuneConfig, number: int) -> dict[str, Any]:
    """Run the full search (``cfg.epochs``) with trial ``number``'s budgets and export it to
    ``OUT/best-trial-NUMBER``. Returns the search report."""
    from ..search import search

    cfg.validate()
    objs = cfg.objective_list()
    url = cfg.storage_url()
    try:
        with _optuna_verbosity(optuna.logging.WARNING):
            study = optuna.load_study(study_name=cfg.study, storage=url)
    except KeyError:
        raise UsageError(f"there is no study {cfg.study!r} in {mask(url)}; run `otonas tune` first") from None
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise UsageError(f"study {cfg.study!r} has no trial {number}; it has {len(trials)} (0–{len(trials) - 1})")
    t = trials[number]
    if t.state != optuna.trial.TrialState.COMPLETE:
        raise UsageError(f"trial {number} is {t.state.name.lower()}, not complete; pick a trial from pareto.json's "
                         "front")
    info = _model_info(cfg)
    sparsity, erase = _budgets_of(t.params, info)
    out = os.path.join(cfg.out, f"best-trial-{number}")
    scfg = _trial_config(cfg, info, sparsity, erase, out, cfg.epochs, export=True, latency="latency" in objs,
                         cost=_cost_of(t.params, info))
    logger.info(f"full search for trial {number} ({cfg.epochs} epochs, budgets {budget_params(t.params)}) into {out}")
    return search(scfg)

