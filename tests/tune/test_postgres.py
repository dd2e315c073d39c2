"""Two `otonas tune` processes share one study in a real PostgreSQL server.

`.ci/run` starts the server (`.ci/postgres.sh`) and sets OTONAS_TEST_POSTGRES_URL; without it
the test is skipped, unless OTONAS_REQUIRE_POSTGRES=1 (as in CI) makes that a failure."""

from __future__ import annotations

import os
import subprocess
import uuid

import optuna
import pytest

from .helpers import env, tune_cmd

URL = os.environ.get("OTONAS_TEST_POSTGRES_URL")


def test_two_processes_share_one_postgres_study(tmp_path):
    if not URL:
        if os.environ.get("OTONAS_REQUIRE_POSTGRES") == "1":
            pytest.fail("OTONAS_REQUIRE_POSTGRES=1 but OTONAS_TEST_POSTGRES_URL is not set: .ci/postgres.sh failed")
        pytest.skip("no PostgreSQL server: set OTONAS_TEST_POSTGRES_URL (bash .ci/postgres.sh starts one)")
    name = f"shared-{uuid.uuid4().hex[:8]}"
    procs = [subprocess.Popen(tune_cmd(tmp_path / f"w{i}", "--storage", URL, "--study", name,
                                       "--trials", str(n), "--seed", "0"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
             for i, n in enumerate((3, 2))]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    study = optuna.load_study(study_name=name, storage=URL)
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(5))  # the sum of both, no number twice
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert all(t.state in finished for t in study.trials)
    workers = {}
    for t in study.trials:
        workers.setdefault(t.user_attrs["otonas:worker"], []).append(t.number)
    assert sorted(len(v) for v in workers.values()) == [2, 3]
    # both really ran at the same time: their trials interleave in time
    spans = {w: (min(study.trials[n].datetime_start for n in ns), max(study.trials[n].datetime_complete for n in ns))
             for w, ns in workers.items()}
    (a0, a1), (b0, b1) = spans.values()
    assert a0 < b1 and b0 < a1
    optuna.delete_study(study_name=name, storage=URL)
