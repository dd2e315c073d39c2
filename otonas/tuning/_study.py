"""The Optuna study of ``otonas tune``, on Optuna's own machinery.

Liveness is Optuna's: the storage is an ``RDBStorage`` with a heartbeat, ``study.optimize``
beats for the running trial, and a trial whose heartbeat is older than the grace period
(``stale_after``) is failed by :func:`optuna.storages.fail_stale_trials` and queued again
by Optuna's retry callback — a new trial with the same budgets that records the number it
retries (:func:`retried_from`), so its new owner finds the checkpoint of the old one.

What Optuna cannot know, otonas adds: on this host a trial's process is known gone at once
(its pid), so a worker restarted after a kill retries its trial without waiting out the
grace period; and a trial interrupted by Ctrl-C, which Optuna marks failed, is queued again
the same way.
"""

from __future__ import annotations

import copy
import os
import random
import socket
import time
import warnings
from collections.abc import Callable
from typing import Any, Literal

import optuna

from ..errors import UsageError
from ..logging import get_logger
from ..search import pid_alive

__all__ = ["open_storage", "open_study", "retried_from", "requeue", "fail_dead_here", "TrialReports", "worker_attrs",
           "mask", "ATTR"]

logger = get_logger("otonas.tuning")

ATTR = "otonas"  # user-attribute prefix on trials and the study
_HEARTBEAT_S = 30  # at most; a shorter grace period beats more often

# Optuna 4.9 renamed the callback and its RDBStorage argument; both names work on older releases
_Retry: Any = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
    optuna.storages.RetryFailedTrialCallback
_RETRY_ARG = ("heartbeat_stale_trial_callback" if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")
              else "failed_trial_callback")


def _experimental(fn: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return fn()


class _RetryAndSay:
    """Optuna's retry of a failed trial (same parameters, its epochs so far), which also says so."""

    def __init__(self, why: str = "was left running by a process that is gone") -> None:
        self.why = why
        # the epochs a retried trial already reported stay reported: a resumed search starts after them
        self._retry = _experimental(lambda: _Retry(inherit_intermediate_values=True))

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # the retry inherits the user attributes, but not the dead process: until its new owner
        # stamps its own, fail_dead_here must not take the retry for the dead trial
        trial = copy.deepcopy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in (f"{ATTR}:pid", f"{ATTR}:host")}
        self._retry(study, trial)
        logger.info(f"trial {trial.number} {self.why}; it is put back in the queue with the same budgets and "
                    "will be resumed")


def retried_from(trial: optuna.trial.FrozenTrial) -> list[int]:
    """The trials ``trial`` retries, oldest first (empty for a fresh trial)."""
    return list(_experimental(lambda: _Retry.retry_history(trial)))


def open_storage(url: str, *, stale_after: float | None = None, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage for ``url``, with a heartbeat when ``stale_after`` (seconds) is given.

    Workers starting together on an empty database race to create Optuna's tables
    (PostgreSQL then refuses the loser with a unique-key violation); the loser waits a
    moment and opens the tables the winner made."""
    kwargs: dict[str, Any] = {}
    if stale_after is not None:
        grace = max(1, round(stale_after))
        kwargs = {"heartbeat_interval": max(1, min(_HEARTBEAT_S, grace // 3)), "grace_period": grace,
                  _RETRY_ARG: _RetryAndSay()}
    engine = {"pool_pre_ping": True} if not url.startswith("sqlite") else {}
    for attempt in range(attempts):
        try:
            return _experimental(lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine, **kwargs))
        except Exception as e:
            text = f"{type(e).__name__} {e}".lower()
            racing = any(w in text for w in ("duplicate key", "already exists", "uniqueviolation", "integrityerror"))
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def mask(url: str) -> str:
    """The URL without its password."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        if ":" in cred:
            cred = cred.split(":", 1)[0] + ":***"
        return f"{scheme}://{cred}@{host}"
    return url


def open_study(url: str, name: str, n_objectives: int, *, stale_after: float,
               pruner: optuna.pruners.BasePruner) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    """Create or load study ``name`` (accuracy up, then the cost, if any, down) and return it
    with its storage. Every failure to reach the storage is a :class:`UsageError` naming it
    (password masked)."""
    directions: list[Literal["minimize", "maximize"]] = ["maximize"]
    directions += ["minimize"] * (n_objectives - 1)
    try:
        storage = open_storage(url, stale_after=stale_after)
        study = optuna.create_study(storage=storage, study_name=name, directions=directions, pruner=pruner,
                                    load_if_exists=True)
        return study, storage
    except ValueError as e:
        if "direction" in str(e).lower():
            raise UsageError(f"study {name!r} in {mask(url)} was made with other objectives; use the same "
                             f"--objectives or another --study ({e})") from None
        raise UsageError(f"cannot open the Optuna storage {mask(url)}: {e}") from None
    except ImportError as e:
        raise UsageError(f"the storage {mask(url)} needs a database driver that is not installed ({e}); "
                         "for postgresql:// run `pip install 'psycopg[binary]'`") from None
    except Exception as e:  # sqlalchemy's OperationalError and friends
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"cannot open the Optuna storage {mask(url)}: {first}") from None


def requeue(study: optuna.Study, number: int, why: str = "was left running by a process that is gone") -> bool:
    """Fail trial ``number`` if it is still running and queue its retry, as Optuna does for a
    trial whose heartbeat stopped. False when it had finished meanwhile (nothing to do)."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    if trial.state == optuna.trial.TrialState.RUNNING:
        try:
            trial = study.tell(number, state=optuna.trial.TrialState.FAIL)
        except (ValueError, RuntimeError):  # its owner (or another worker) finished it meanwhile
            return False
    elif trial.state != optuna.trial.TrialState.FAIL:
        return False
    _RetryAndSay(why)(study, trial)
    return True


def fail_dead_here(study: optuna.Study) -> None:
    """Retry at once the running trials whose process, on this host, is gone (Optuna's heartbeat
    would find them too, once the grace period is over)."""
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = t.user_attrs.get(f"{ATTR}:pid")  # set before the host: a trial with a host has its pid
        if t.user_attrs.get(f"{ATTR}:host") == host and pid is not None and not pid_alive(int(pid)):
            requeue(study, t.number)


class TrialReports:
    """One running trial's intermediate values, each step stored once, and the pruner's verdict.

    Single-objective studies go through ``trial.report`` and ``trial.should_prune``; Optuna
    refuses both for multi-objective studies, where the same two steps use the storage's
    public API and the study's pruner directly."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage, trial: optuna.Trial) -> None:
        self.study, self.storage, self.trial = study, storage, trial
        self._multi = len(study.directions) > 1
        study_id = storage.get_study_id_from_name(study.study_name)
        self._id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)

    def frozen(self) -> optuna.trial.FrozenTrial:
        return self.storage.get_trial(self._id)

    def report(self, value: float, step: int) -> None:
        if step in self.frozen().intermediate_values:
            return
        if self._multi:
            self.storage.set_trial_intermediate_value(self._id, step, value)
        else:
            self.trial.report(value, step)

    def should_prune(self) -> bool:
        if self._multi:
            return self.study.pruner.prune(self.study, self.frozen())
        return self.trial.should_prune()


def worker_attrs(worker: str, out: str) -> list[tuple[str, Any]]:
    """What a worker stamps on the trial it runs; the pid goes before the host (see fail_dead_here)."""
    return [("worker", worker), ("pid", os.getpid()), ("host", socket.gethostname()), ("out", os.path.abspath(out))]
