"""The study on Optuna's machinery: a stale heartbeat, a dead local process and Ctrl-C all fail
the trial and queue a retry with the same budgets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from otonas.tuning._study import fail_dead_here, open_storage, requeue, retried_from

pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
              pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")]


def _study(tmp_path, **kw):
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", **kw)
    return optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize"]), storage


def _running(study):
    trial = study.ask()
    trial.suggest_float("sparsity", 0.1, 0.8)
    return trial


def _retry_of(study, number):
    (retry,) = [t for t in study.get_trials(deepcopy=False) if retried_from(t) == [number]]
    return retry


def test_a_trial_whose_heartbeat_stopped_is_failed_and_retried(tmp_path):
    study, storage = _study(tmp_path, stale_after=1)
    assert storage.get_heartbeat_interval() == 1 and storage.grace_period == 1
    trial = _running(study)
    storage.record_heartbeat(trial._trial_id)  # what study.optimize's heartbeat thread does
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    retry = _retry_of(study, trial.number)
    assert retry.params == trial.params


def test_a_dead_process_on_this_host_is_retried_at_once(tmp_path):
    study, _ = _study(tmp_path, stale_after=300)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone, alive, elsewhere = _running(study), _running(study), _running(study)
    for trial, pid, host in ((gone, dead.pid, socket.gethostname()), (alive, os.getpid(), socket.gethostname()),
                             (elsewhere, dead.pid, "another-host")):
        trial.set_user_attr("otonas:pid", pid)
        trial.set_user_attr("otonas:host", host)
    fail_dead_here(study)
    states = {t.number: t.state for t in study.trials}
    assert states[gone.number] == TrialState.FAIL
    assert states[alive.number] == states[elsewhere.number] == TrialState.RUNNING  # alive, or not ours to judge
    retry = _retry_of(study, gone.number)
    assert retry.params == gone.params
    assert "otonas:pid" not in retry.user_attrs  # not mistaken for the dead trial once it runs


@pytest.mark.parametrize("told", [False, True])
def test_requeue_an_interrupted_trial(tmp_path, told):
    """Optuna's optimize marks a Ctrl-C'd trial failed (told); a trial may also still be running."""
    study, _ = _study(tmp_path)
    trial = _running(study)
    if told:
        study.tell(trial, state=TrialState.FAIL)
    assert requeue(study, trial.number, "was interrupted")
    assert _retry_of(study, trial.number).params == trial.params
    done = _running(study)
    study.tell(done, [0.5, 1.0])
    assert not requeue(study, done.number)  # a finished trial stays as it is
