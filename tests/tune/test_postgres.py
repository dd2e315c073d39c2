"""Two `otonas tune` processes share one study in a real PostgreSQL server.

`.ci/run` starts the server (`.ci/postgres.sh`) and sets OTONAS_TEST_POSTGRES_URL; without it
the test is skipped, unless OTONAS_REQUIRE_POSTGRES=1 (as in CI) makes that a failure."""

from __future__ import annotations

import os
import subprocess
import time
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
    import sqlalchemy

    name = f"shared-{uuid.uuid4().hex[:8]}"
    # A barrier that does not depend on how fast each process starts: the test holds the
    # trials table locked until both workers wait on it, so their first trials are asked for
    # at the same moment and run side by side (the contended case this test is about).
    optuna.delete_study(study_name=optuna.create_study(storage=URL).study_name, storage=URL)  # the tables exist
    engine = sqlalchemy.create_engine(URL)
    with engine.connect() as lock:
        lock.execute(sqlalchemy.text("LOCK TABLE trials IN ACCESS EXCLUSIVE MODE"))
        procs = [subprocess.Popen(tune_cmd(tmp_path / f"w{i}", "--storage", URL, "--study", name,
                                           "--trials", str(n), "--seed", "0"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
                 for i, n in enumerate((3, 2))]
        waiting = "SELECT count(*) FROM pg_locks WHERE relation = 'trials'::regclass AND NOT granted"
        deadline = time.monotonic() + 600
        with engine.connect() as probe:
            while probe.execute(sqlalchemy.text(waiting)).scalar_one() < 2:
                probe.rollback()
                gone = [p for p in procs if p.poll() is not None]
                if gone or time.monotonic() > deadline:
                    for p in procs:
                        p.kill()
                    errs = [p.communicate()[1] for p in procs]
                    pytest.fail(f"the workers did not both reach the study: {errs}")
                time.sleep(0.2)
        lock.rollback()  # release: both ask for a trial at once
    engine.dispose()
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


def test_workers_starting_together_on_an_empty_database(tmp_path):
    """Optuna creates its tables on first use; workers that start at once race to do it (plain
    RDBStorage loses about half of them here). otonas retries the loser."""
    if not URL:
        pytest.skip("no PostgreSQL server")
    import sqlalchemy

    db = f"race_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f"CREATE DATABASE {db}"))
    url = URL.rsplit("/", 1)[0] + "/" + db
    code = ("import optuna; from otonas.tuning._study import open_storage; "
            f"optuna.create_study(storage=open_storage({url!r}), study_name='s', load_if_exists=True)")
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env=env())
             for _ in range(4)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    assert optuna.get_all_study_names(url) == ["s"]
