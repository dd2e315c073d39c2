"""`otonas tune`: trials, the Pareto front and its files, resume after a kill, export-best."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import optuna
import pytest

from otonas.tuning import TuneConfig, tune

from .helpers import env, run, tune_cmd


def _study(out, name="otonas"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out}/study.db")


def test_tune_writes_the_front(tmp_path):
    out = tmp_path / "t"
    cfg = TuneConfig(out=str(out), model="search_spaces:resnet20", data="synthetic", trials=3, trial_epochs=2,
                     progress=False, search={"lr": 0.1, "batch_size": 128})
    result = tune(cfg)
    study = _study(out)
    states = [t.state for t in study.trials]
    assert len(states) == 3 and all(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
                                    for s in states)
    rows = {r["trial"]: r for r in result["trials"]}
    full = result["full"]["flops"]
    for t in study.trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            acc, flops = t.values
            assert rows[t.number]["accuracy"] == acc and rows[t.number]["flops"] == flops
            assert 0 < flops < full  # a built subnet, smaller than the full model
            assert 0.1 <= t.params["sparsity"] <= 0.8
    # the front is exactly the non-dominated complete trials
    done = [r for r in rows.values() if r["state"] == "complete"]
    for r in done:
        dominated = any(o["accuracy"] >= r["accuracy"] and o["flops"] <= r["flops"] and o is not r
                        and (o["accuracy"] > r["accuracy"] or o["flops"] < r["flops"]) for o in done)
        assert (r["trial"] in result["front"]) == (not dominated)
    on_disk = json.loads((out / "pareto.json").read_text())
    assert on_disk["front"] == result["front"]
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "pareto.html").read_text()
    assert "data:image/png;base64," in page and "Pareto front" in page
    # the same call again has nothing left to do and keeps the study as it was
    again = tune(cfg)
    assert len(_study(out).trials) == 3 and again["front"] == result["front"]


def test_kill_during_a_trial_then_resume(tmp_path):
    """3 trials finish, the process is killed inside trial 4 (number 3) after its first epoch;
    the same command then ends the study with exactly 6 finished trials: trial 3 is failed and
    retried (Optuna's retry callback) as trial 4 with the same budgets, resumed from trial 3's
    checkpoint; none lost or run twice."""
    out = tmp_path / "t"
    cmd = tune_cmd(out, "--trials", "6", "--pruner", "none")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(),
                            start_new_session=True)
    marker = out / "trials" / "trial-0003" / "checkpoint" / "run.json"
    deadline = time.time() + 480
    while not marker.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "trial 3 never wrote a checkpoint"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    study = _study(out)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3 + \
        [optuna.trial.TrialState.RUNNING]
    params3 = dict(study.trials[3].params)
    epochs_done = json.loads(marker.read_text())["epoch"]
    assert epochs_done >= 1

    res = run(cmd)
    assert res.returncode == 0, res.stderr
    assert "trial 3 was left running by a process that is gone; it is put back in the queue" in res.stderr
    study = _study(out)
    assert [t.number for t in study.trials] == list(range(7))
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 3 + [optuna.trial.TrialState.FAIL] + \
        [optuna.trial.TrialState.COMPLETE] * 3, states
    retry = study.trials[4]
    assert retry.system_attrs["failed_trial"] == 3  # Optuna's record of the trial it retries
    assert retry.params == params3  # the same budgets, not a new draw
    report = json.loads((out / "trials" / "trial-0004" / "report.json").read_text())
    assert report["epochs"] == 3
    assert not (out / "trials" / "trial-0003").exists()  # the retry took its folder over
    # intermediate values: one per epoch, none duplicated by the resume
    assert sorted(retry.intermediate_values) == [0, 1, 2]
    rows = {r["trial"]: r for r in json.loads((out / "pareto.json").read_text())["trials"]}
    assert rows[4]["retry_of"] == 3 and rows[3]["state"] == "fail"
    # and a third run with the same --trials does nothing more
    res = run(cmd)
    assert res.returncode == 0 and len(_study(out).trials) == 7
    assert "already has 6 finished" in res.stderr


def test_export_best_runs_the_full_search(tmp_path):
    out = tmp_path / "t"
    res = run(tune_cmd(out, "--trials", "2", "--pruner", "none", "--json"))
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    best = result["front"][0]
    res = run(tune_cmd(out, "--export-best", str(best), "--epochs", "2"))
    assert res.returncode == 0, res.stderr
    folder = out / f"best-trial-{best}"
    assert {"model.py", "model.safetensors", "report.json"} <= set(os.listdir(folder))
    report = json.loads((folder / "report.json").read_text())
    row = next(r for r in result["trials"] if r["trial"] == best)
    assert report["config"]["target_sparsity"] == pytest.approx(row["budgets"]["sparsity"])
    assert report["epochs"] == 2 and report["accuracy_full"] == report["accuracy_subnet"]


@pytest.mark.parametrize("args, words", [
    (["--objectives", "flops"], "--objectives"),
    (["--objectives", "accuracy,energy"], "--objectives"),
    (["--trial-epochs", "0"], "at least 1"),
    (["--space", "/nonexistent/b.toml"], "does not exist"),
    (["--storage", "postgresql://nobody@127.0.0.1:1/none"], "cannot open the Optuna storage"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, words):
    res = run(tune_cmd(tmp_path / "t", "--trials", "1", *args), timeout=120)
    assert res.returncode == 2
    assert words in res.stderr and "Traceback" not in res.stderr


def test_export_best_of_a_missing_trial(tmp_path):
    out = tmp_path / "t"
    assert run(tune_cmd(out, "--trials", "1", "--pruner", "none")).returncode == 0
    res = run(tune_cmd(out, "--export-best", "7"))
    assert res.returncode == 2 and "has no trial 7" in res.stderr


def test_second_process_on_the_same_out_is_refused(tmp_path):
    import fcntl

    out = tmp_path / "t"
    out.mkdir()
    with open(out / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        res = run(tune_cmd(out, "--trials", "1"), timeout=120)
    assert res.returncode == 2 and "its own --out" in res.stderr


def test_per_stage_budgets_reach_each_stage(tmp_path):
    from otonas.analysis import group_stages

    out = tmp_path / "t"
    result = tune(TuneConfig(out=str(out), model="search_spaces:resnet20", data="synthetic", trials=2,
                             trial_epochs=2, progress=False, pruner="none", search={"lr": 0.1, "batch_size": 128},
                             space={"sparsity": [0.2, 0.9], "per": "stage", "stages": {"stem": [0.0, 0.0]}}))
    import otonas
    import search_spaces
    import torch

    space = otonas.analyze(search_spaces.create("resnet20", size="tiny", in_chans=3, num_classes=4),
                           (torch.randn(2, 3, 16, 16),))
    stages = group_stages(space)
    for row in result["trials"]:
        assert row["state"] == "complete"
        budgets = {k.split(":", 1)[1]: v for k, v in row["budgets"].items()}
        assert set(budgets) == set(stages) and budgets["stem"] == 0.0
        for name, members in stages.items():  # capped: every family keeps a channel
            spare = len(members) - len({space.group_family[g] for g in members})
            assert budgets[name] <= spare / len(members) + 1e-12
        report = json.loads((out / "trials" / f"trial-{row['trial']:04d}" / "report.json").read_text())
        assert report["config"]["target_sparsity"] == budgets


def test_config_file_with_search_and_space_tables(tmp_path):
    cfg = tmp_path / "tune.toml"
    cfg.write_text('trials = 1\ntrial-epochs = 1\npruner = "none"\n'
                   '[search]\nbatch-size = 128\nlr = 0.1\n'
                   '[space]\nsparsity = [0.3, 0.3]\n')
    out = tmp_path / "t"
    res = run([*tune_cmd(out), "--config", str(cfg), "--trial-epochs", "2", "--json"])
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    (row,) = result["trials"]
    assert row["budgets"] == {"sparsity": 0.3}
    report = json.loads((out / "trials" / "trial-0000" / "report.json").read_text())
    assert report["epochs"] == 2  # the flag overrides the file
    assert report["config"]["batch_size"] == 128 and report["config"]["lr"] == 0.1
    bad = tmp_path / "bad.toml"
    bad.write_text("trails = 3\n")
    res = run([*tune_cmd(tmp_path / "u"), "--config", str(bad)])
    assert res.returncode == 2 and "unknown key 'trails'" in res.stderr


def test_round_to_reaches_every_trial(tmp_path):
    """--round-to is passed to each trial's search: its report records it and the trial's FLOPs
    target still holds."""
    out = tmp_path / "t"
    res = run([*tune_cmd(out), "--trials", "1", "--trial-epochs", "1", "--pruner", "none", "--round-to", "2",
               "--target-flops", "0.5,0.5", "--json"])
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "trials" / "trial-0000" / "report.json").read_text())
    assert report["config"]["round_to"] == 2 and report["round_to"] == 2
    assert report["flops_kept"] <= 0.5 and report["forced_groups"] == 0


def test_erase_mode_flops_range_erases_operators_to_the_drawn_share(tmp_path):
    """--mode erase --target-flops LO,HI: each trial draws ``flops`` (no ``erase``) and its search
    erases operators until the supernet keeps at most that share of its FLOPs."""
    out = tmp_path / "t"
    res = run([*tune_cmd(out), "--model", "search_spaces:darts", "--mode", "erase", "--trials", "1",
               "--trial-epochs", "1", "--pruner", "none", "--target-flops", "0.6,0.7", "--json"])
    assert res.returncode == 0, res.stderr
    (trial,) = _study(out).trials
    assert set(trial.params) == {"flops"} and 0.6 <= trial.params["flops"] <= 0.7
    report = json.loads((out / "trials" / "trial-0000" / "report.json").read_text())
    assert report["config"]["target_flops"] == pytest.approx(trial.params["flops"])
    assert report["flops_kept"] <= trial.params["flops"] and report["forced_groups"] == 0
    assert report["erased_operators"]
    both = run([*tune_cmd(tmp_path / "b"), "--model", "search_spaces:darts", "--mode", "both", "--trials", "1",
                "--target-flops", "0.6,0.7"])
    assert both.returncode == 2 and "--mode both use sparsity and erase ranges" in both.stderr
