"""``otonas tune``: Optuna searches the budgets; each trial is a short ``otonas search``.

Resumable and shared: the study lives in an Optuna RDB storage (SQLite file by default,
PostgreSQL for several machines). Each process is a *worker* with its own output folder;
``--trials N`` is the number of finished trials that worker contributes, so the same command
run again continues where it stopped, and two workers on one study add up.

A trial whose process died (killed, machine lost) is left RUNNING in the storage. The next
worker that starts puts it back to WAITING — at once when its owner was on this host and its
process is gone, else once its heartbeat is older than ``stale_after`` seconds — and Optuna's
``ask`` hands it out again with the same number and budgets; the new owner resumes it from the
trial's checkpoint when that is in its own folder. No trial is lost and none is run twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .._errors import OtonasError, UsageError
from ..search._state import atomic_write_text, pid_alive
from ._budgets import BudgetSpace, group_stages

__all__ = ["TuneConfig", "tune", "export_best", "pareto_front", "BudgetAwareMedianPruner", "OBJECTIVES"]

OBJECTIVES = ("accuracy", "flops", "params", "latency")
_COST_KEY = {"flops": "flops_after", "params": "params_after", "latency": "latency_ms"}
_ATTR = "otonas"  # user-attribute prefix on trials and the study


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
    stale_after: float = 300.0  # seconds without a heartbeat before another host's trial is retaken
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
                 "resume", "seed"}
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


# --- the pruner ---------------------------------------------------------------------------

def _budget_params(params: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in params.items() if k in ("erase", "flops") or k.startswith("sparsity")}


class BudgetAwareMedianPruner:
    """Optuna's median rule, compared only against trials that remove at least as much.

    A trial is stopped at epoch ``e`` when its validation accuracy is below the median, at the
    same epoch, of the finished trials whose every budget is at least its own (so whose cost
    will be no higher). Plain median pruning would stop every high-sparsity trial for being
    less accurate than low-sparsity ones — exactly the cheap end of the Pareto front; this rule
    only stops trials that others already beat at no higher cost. Works for one objective and
    for two (Optuna's own pruners do not support multi-objective studies)."""

    def __init__(self, n_startup_trials: int = 3, n_warmup_steps: int = 1) -> None:
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps

    def prune(self, study: Any, trial: Any) -> bool:
        import optuna

        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        value = trial.intermediate_values[step]
        mine = _budget_params(trial.params)
        peers = []
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                          optuna.trial.TrialState.PRUNED)):
            if t.number == trial.number or step not in t.intermediate_values:
                continue
            theirs = _budget_params(t.params)
            # "removes at least as much": a higher sparsity or erase budget, a lower share of FLOPs kept
            if set(theirs) == set(mine) and all(
                    (theirs[k] <= mine[k] + 1e-12) if k == "flops" else (theirs[k] >= mine[k] - 1e-12) for k in mine):
                peers.append(t.intermediate_values[step])
        if len(peers) < self.n_startup_trials:
            return False
        return bool(value < float(np.median(peers)))


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


def _requeue_stale(study: Any, stale_after: float) -> list[int]:
    """Put trials whose process is gone back to WAITING; returns their numbers."""
    import optuna

    host, now, back = socket.gethostname(), time.time(), []
    storage = study._storage  # Optuna's storage API is public; the study holds it privately
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        attrs = t.user_attrs
        beat = float(attrs.get(f"{_ATTR}:heartbeat", 0.0))
        dead_here = attrs.get(f"{_ATTR}:host") == host and not pid_alive(int(attrs.get(f"{_ATTR}:pid", -1)))
        if dead_here or (beat and now - beat > stale_after) or (not beat and t.datetime_start is not None and
                                                              now - t.datetime_start.timestamp() > stale_after):
            try:
                storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.WAITING)
                back.append(t.number)
            except Exception:  # finished meanwhile by its owner: nothing to do
                pass
    return back


class _Heartbeat:
    """Stamps the running trial every ``interval`` seconds so other hosts can tell it is alive."""

    def __init__(self, study: Any, interval: float = 30.0) -> None:
        self.study, self.interval = study, interval
        self._trial_id: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otonas-tune-heartbeat", daemon=True)
        self._thread.start()

    def watch(self, trial_id: int | None) -> None:
        self._trial_id = trial_id

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            tid = self._trial_id
            if tid is not None:
                with contextlib.suppress(Exception):
                    self.study._storage.set_trial_user_attr(tid, f"{_ATTR}:heartbeat", time.time())

    def close(self) -> None:
        self._stop.set()


# --- the study -----------------------------------------------------------------------------

def _model_info(cfg: TuneConfig) -> dict[str, Any]:
    """Analyse the model once: full costs, stages, whether it prunes/erases by default."""
    from ..analysis import analyze
    from ..search import SearchConfig
    from ..search._data import load_data
    from ..search._run import _is_supernet, _make_model

    import torch

    scfg = SearchConfig(model=cfg.model, data=cfg.data, **cfg.search)
    data = load_data(scfg.data, seed=cfg.seed, val_fraction=scfg.val_fraction, download=scfg.download)
    model = _make_model(scfg, data)
    example = torch.stack([data.train[i][0] for i in range(2)])
    space = analyze(model, (example,))
    mode = scfg.mode or ("erase" if _is_supernet(scfg) else "prune")
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
    import optuna

    kind = cfg.sampler or ("nsga2" if len(objs) > 1 else "tpe")
    # Each worker and each restart draws its own random stream: two machines with one seed
    # would otherwise propose the same budgets.
    seed = (cfg.seed * 1_000_003 + int(worker, 16) + 7919 * n_seed) % 2**32
    return {"nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
            "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed)}[kind]()


def _open_study(cfg: TuneConfig, objs: list[str], worker: str) -> Any:
    import optuna

    directions: list[Literal["minimize", "maximize"]] = ["maximize"]
    directions += ["minimize"] * (len(objs) - 1)
    url = cfg.storage_url()
    try:
        storage = _rdb_storage(url)
        study = optuna.create_study(storage=storage, study_name=cfg.study, directions=directions,
                                    load_if_exists=True)
    except ValueError as e:
        if "direction" in str(e).lower():
            raise UsageError(f"study {cfg.study!r} in {_mask(url)} was made with other objectives; use the same "
                             f"--objectives or another --study ({e})") from None
        raise UsageError(f"cannot open the Optuna storage {_mask(url)}: {e}") from None
    except ImportError as e:
        raise UsageError(f"the storage {_mask(url)} needs a database driver that is not installed ({e}); "
                         "for postgresql:// run `pip install 'psycopg[binary]'`") from None
    except Exception as e:  # sqlalchemy's OperationalError and friends
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"cannot open the Optuna storage {_mask(url)}: {first}") from None
    return study


def _rdb_storage(url: str, attempts: int = 5) -> Any:
    """Optuna's RDB storage for ``url``. Workers starting together on an empty database race to
    create Optuna's tables (PostgreSQL then refuses the loser with a unique-key violation);
    the loser waits a moment and opens the tables the winner made."""
    import random

    import optuna

    kwargs = {"pool_pre_ping": True} if not url.startswith("sqlite") else {}
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except Exception as e:
            text = f"{type(e).__name__} {e}".lower()
            racing = any(w in text for w in ("duplicate key", "already exists", "uniqueviolation", "integrityerror"))
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def _mask(url: str) -> str:
    """The URL without its password."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        if ":" in cred:
            cred = cred.split(":", 1)[0] + ":***"
        return f"{scheme}://{cred}@{host}"
    return url


def _check_study(study: Any, cfg: TuneConfig, objs: list[str], space: BudgetSpace) -> None:
    """The first worker records what the study is; later ones must agree with it."""
    mine = {"objectives": objs, "model": cfg.model, "data": cfg.data, "space": space.to_dict(),
            "trial_epochs": cfg.trial_epochs}
    key = f"{_ATTR}:setup"
    have = study.user_attrs.get(key)
    if have is None:
        study.set_user_attr(key, mine)
        return
    for k, v in mine.items():
        if have.get(k) != v:
            raise UsageError(f"study {cfg.study!r} was started with {k}={have.get(k)!r}, this command has "
                             f"{k}={v!r}; use the same options, or a new --study")


def _mine_finished(study: Any, worker: str) -> int:
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(1 for t in study.get_trials(deepcopy=False, states=done)
               if t.user_attrs.get(f"{_ATTR}:worker") == worker)


def _trial_config(cfg: TuneConfig, info: dict[str, Any], sparsity: Any, erase: float, out: str,
                  epochs: int, *, export: bool, latency: bool, flops: float | None = None) -> Any:
    from ..search import SearchConfig

    return SearchConfig(**{**cfg.search, "out": out, "model": cfg.model, "data": cfg.data, "epochs": epochs,
                           "seed": cfg.seed, "mode": info["mode"], "target_sparsity": sparsity,
                           "target_flops": flops, "erase_budget": erase, "export": export, "measure_latency": latency,
                           "resume": os.path.exists(os.path.join(out, "checkpoint", "run.json")),
                           "progress": cfg.progress and cfg.search.get("progress", True)})


def _flops_of(params: Mapping[str, Any], info: dict[str, Any]) -> float | None:
    """The fraction of FLOPs to keep that a trial drew (a ``flops`` budget range), else None."""
    if "flops" in params and info["mode"] == "prune":
        return float(params["flops"])
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


def _run_trial(cfg: TuneConfig, study: Any, trial: Any, objs: list[str], space: BudgetSpace,
               info: dict[str, Any], pruner: BudgetAwareMedianPruner | None) -> list[float]:
    import optuna

    from ..search import search

    prune_dim = info["mode"] in ("prune", "both")
    erase_dim = info["mode"] in ("erase", "both")
    space.suggest(trial, prune=prune_dim, erase=erase_dim, stages=info["stages"], limits=info["limits"])
    sparsity, erase = _budgets_of(trial.params, info)
    out = os.path.join(cfg.out, "trials", f"trial-{trial.number:04d}")
    scfg = _trial_config(cfg, info, sparsity, erase, out, cfg.trial_epochs, export=False,
                         flops=_flops_of(trial.params, info),
                         latency="latency" in objs)
    storage = study._storage
    multi = len(objs) > 1

    def record(row: dict[str, Any]) -> int:
        """Store an epoch's validation accuracy once; returns its step."""
        step = int(row["epoch"]) - 1
        if step not in storage.get_trial(trial._trial_id).intermediate_values:
            if multi:  # Trial.report refuses multi-objective studies; the storage call is what it does
                storage.set_trial_intermediate_value(trial._trial_id, step, float(row["val_accuracy"]))
            else:
                trial.report(float(row["val_accuracy"]), step)
        return step

    def on_epoch(row: dict[str, Any]) -> None:
        step = record(row)
        if pruner is not None and pruner.prune(study, storage.get_trial(trial._trial_id)):
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
            trial.set_user_attr(f"{_ATTR}:{k}", report[k])
    trial.set_user_attr(f"{_ATTR}:erased", len(report["erased_operators"]))
    values = [float(report["accuracy_subnet"])]
    for o in objs[1:]:
        values.append(float(report[_COST_KEY[o]]))
    return values


def _say(msg: str) -> None:
    print(f"otonas tune: {msg}", file=sys.stderr, flush=True)


def tune(cfg: TuneConfig | None = None, /, **options: Any) -> dict[str, Any]:
    """Run (or continue) the study until this worker has contributed ``cfg.trials`` finished
    trials; write ``pareto.json``, ``pareto.png`` and ``pareto.html`` to ``cfg.out``. Returns
    the contents of ``pareto.json``.

    Pass a :class:`TuneConfig`, or its fields as keywords: ``otonas.tune(model=..., trials=20)``."""
    import optuna

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
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _worker_lock(cfg.out) as worker:
        info = _model_info(cfg)
        if info["mode"] in ("prune", "both") and not info["prunable_groups"]:
            raise UsageError(f"{cfg.model} has no prunable channel groups; run `otonas analyze` to see why")
        if info["mode"] in ("erase", "both") and not info["erasing_groups"]:
            raise UsageError(f"{cfg.model} has no erasable operators; pass search mode = \"prune\"")
        if space.flops is not None and info["mode"] != "prune":
            raise UsageError(f"a flops budget range needs --mode prune (this study's mode is {info['mode']}); "
                             "with operator erasure use sparsity and erase ranges")
        if space.per == "stage":
            if info["mode"] != "prune":
                raise UsageError(f"per = \"stage\" budgets need mode prune (this run's mode is {info['mode']}): "
                                 "per-stage targets are a DHSPG feature; use per = \"global\"")
            space.check_stages(info["stages"])
        study = _open_study(cfg, objs, worker)
        study.sampler = _sampler(cfg, objs, worker, len(study.trials))
        _check_study(study, cfg, objs, space)
        back = _requeue_stale(study, cfg.stale_after)
        if back:
            _say(f"trial(s) {', '.join(map(str, back))} were left running by a process that is gone; "
                 "they are put back in the queue and will be resumed")
        pruner = (BudgetAwareMedianPruner(cfg.startup_trials, cfg.warmup_epochs)
                  if cfg.pruner == "median" else None)
        done = _mine_finished(study, worker)
        if done >= cfg.trials:
            _say(f"this worker ({cfg.out}) already has {done} finished trial(s) in study {cfg.study!r}; "
                 f"raise --trials above {done} to run more")
        heartbeat = _Heartbeat(study)
        failures = 0
        try:
            while done < cfg.trials:
                trial = study.ask()
                for k, v in (("worker", worker), ("host", socket.gethostname()), ("pid", os.getpid()),
                             ("heartbeat", time.time()), ("out", os.path.abspath(cfg.out))):
                    trial.set_user_attr(f"{_ATTR}:{k}", v)
                heartbeat.watch(trial._trial_id)
                _say(f"trial {trial.number} ({done + 1}/{cfg.trials} of this worker) starts")
                t0 = time.time()
                try:
                    values = _run_trial(cfg, study, trial, objs, space, info, pruner)
                except optuna.TrialPruned as e:
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    _say(f"trial {trial.number} pruned: {e} ({time.time() - t0:.0f} s)")
                    done += 1
                    failures = 0
                except (KeyboardInterrupt, SystemExit):
                    # left RUNNING on purpose: the next run puts it back in the queue and resumes it
                    raise
                except Exception as e:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    failures += 1
                    _say(f"trial {trial.number} failed: {type(e).__name__}: {e}")
                    if failures >= 3:
                        raise OtonasError(f"3 trials in a row failed; the last: {type(e).__name__}: {e}") from e
                else:
                    study.tell(trial, values)
                    done += 1
                    failures = 0
                    _say(f"trial {trial.number} done: " + ", ".join(
                        f"{o} {v:.4g}" for o, v in zip(objs, values)) + f" ({time.time() - t0:.0f} s)")
                finally:
                    heartbeat.watch(None)
                _drop_checkpoint(cfg.out, trial.number)
        finally:
            heartbeat.close()
        result = pareto_front(study, objs, info)
        result["study"], result["storage"] = cfg.study, _mask(cfg.storage_url())
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
                           "budgets": _budget_params(t.params)}
    if t.values is not None:
        row["accuracy"] = float(t.values[0])
        for o, v in zip(objs[1:], t.values[1:]):
            row[o] = float(v)
    for k in ("flops_after", "params_after", "latency_ms", "group_sparsity", "erased", "seconds"):
        if f"{_ATTR}:{k}" in attrs:
            row[k.removesuffix("_after")] = attrs[f"{_ATTR}:{k}"]
    if "flops" in row:
        row["flops_ratio"] = row["flops"] / max(info["flops"], 1)
    if "params" in row:
        row["params_ratio"] = row["params"] / max(info["params"], 1)
    row["epochs"] = {str(k + 1): v for k, v in sorted(t.intermediate_values.items())}
    return row


def pareto_front(study: Any, objs: Sequence[str], info: Mapping[str, Any]) -> dict[str, Any]:
    """Every finished trial and the Pareto front (accuracy up, cost down), as plain data."""
    import optuna

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
    import optuna

    from ..search import search

    cfg.validate()
    objs = cfg.objective_list()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = cfg.storage_url()
    try:
        study = optuna.load_study(study_name=cfg.study, storage=url)
    except KeyError:
        raise UsageError(f"there is no study {cfg.study!r} in {_mask(url)}; run `otonas tune` first") from None
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
                         flops=_flops_of(t.params, info))
    _say(f"full search for trial {number} ({cfg.epochs} epochs, budgets {_budget_params(t.params)}) into {out}")
    return search(scfg)

