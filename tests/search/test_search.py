"""`otonas search`: the run, its outputs, resume after an interruption, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from otonas.search import SearchConfig, load_state, save_state, search

FIGURES = ["accuracy_full", "accuracy_subnet", "params_before", "params_after", "flops_before", "flops_after",
           "group_sparsity", "erased_operators", "max_abs_diff", "epochs"]


def test_state_round_trip_without_pickle(tmp_path):
    state = {"state": {0: {"momentum_buffer": torch.randn(3, 2)}, 1: {"step": torch.tensor(4.0)}},
             "param_groups": [{"lr": 0.1, "params": [0, 1], "betas": (0.9, 0.99), "name": None}],
             "flags": [True, 3, "x"]}
    save_state(state, str(tmp_path / "opt"))
    back = load_state(str(tmp_path / "opt"))
    assert torch.equal(back["state"][0]["momentum_buffer"], state["state"][0]["momentum_buffer"])
    assert back["param_groups"][0]["betas"] == (0.9, 0.99)
    assert back["flags"] == [True, 3, "x"]
    assert set(os.listdir(tmp_path)) == {"opt.json", "opt.safetensors"}


def _cfg(out, **kw):
    base = dict(out=str(out), model="search_spaces:resnet20", data="digits", mode="prune", target_sparsity=0.5,
                epochs=3, batch_size=128, lr=0.1, progress=False, seed=3)
    base.update(kw)
    return SearchConfig(**base)


def test_prune_search_is_exact_and_writes_its_outputs(tmp_path):
    report = search(_cfg(tmp_path))
    assert report["accuracy_subnet"] == report["accuracy_full"]
    assert report["max_abs_diff"] < 1e-4
    assert report["group_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert report["params_after"] < report["params_before"] and report["flops_after"] < report["flops_before"]
    on_disk = json.loads((tmp_path / "report.json").read_text())
    for key in FIGURES + ["seconds"]:
        assert key in on_disk
    run = json.loads((tmp_path / "checkpoint" / "run.json").read_text())
    assert run["epoch"] == 3
    assert (tmp_path / "checkpoint" / run["folder"] / "model.safetensors").exists()


def _sigint_default() -> None:
    # A shell that starts the test run in the background makes its children ignore SIGINT, and
    # Python then installs no KeyboardInterrupt handler: give the child back the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "otonas", "search", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default, **kw)


# 8 epochs, cut after the 2nd: the SIGINT must land in training, with room to spare on a loaded machine
ARGS = ["--model", "search_spaces:resnet20", "--mode", "prune", "--target-sparsity", "0.5", "--epochs", "8",
        "--batch-size", "128", "--lr", "0.1", "--seed", "5", "--no-progress", "--json"]


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    whole = _cli(*ARGS, "--out", str(tmp_path / "whole"))
    out, err = whole.communicate(timeout=900)
    assert whole.returncode == 0, err
    expected = json.loads(out)

    run = tmp_path / "cut"
    p = _cli(*ARGS, "--out", str(run))
    run_json = run / "checkpoint" / "run.json"
    deadline = time.time() + 900
    while time.time() < deadline:
        if run_json.exists() and json.loads(run_json.read_text())["epoch"] >= 2:
            break
        time.sleep(0.2)
    assert p.poll() is None, "the run ended before it could be interrupted"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 130, err
    assert "--resume" in err
    epoch = json.loads(run_json.read_text())["epoch"]
    assert 2 <= epoch < 8

    resumed = _cli(*ARGS, "--out", str(run), "--resume")
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err
    got = json.loads(out)
    for key in FIGURES:
        assert got[key] == expected[key], key


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    search(_cfg(tmp_path, epochs=1))
    run = json.loads((tmp_path / "checkpoint" / "run.json").read_text())
    (tmp_path / "checkpoint" / run["folder"] / "optimizer.safetensors").write_bytes(b"\x00garbage")
    p = _cli("--model", "search_spaces:resnet20", "--mode", "prune", "--epochs", "2", "--batch-size", "128",
             "--lr", "0.1", "--seed", "3", "--no-progress", "--out", str(tmp_path), "--resume")
    _, err = p.communicate(timeout=600)
    assert p.returncode == 2
    assert "corrupt" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,needle", [
    (["--data", "imagefolder:/does/not/exist"], "does not exist"),
    (["--model", "search_spaces:nope"], "no entry 'nope'"),
    (["--target-sparsity", "1.5"], "--target-sparsity 1.5"),
    (["--erase-budget", "-1"], "--erase-budget -1"),
    (["--data", "mnist"], "unknown --data 'mnist'"),
])
def test_bad_input_exit_2(tmp_path, args, needle):
    p = _cli(*args, "--out", str(tmp_path), "--epochs", "1")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2, err
    assert needle in err and "Traceback" not in err


def test_erase_search_on_darts_is_exact_and_exports(tmp_path):
    report = search(SearchConfig(out=str(tmp_path), model="search_spaces:darts", data="digits", mode="erase",
                                 erase_budget=0.5, epochs=2, batch_size=128, lr=0.05, progress=False, seed=1))
    assert report["accuracy_subnet"] == report["accuracy_full"]
    assert len(report["erased_operators"]) == int(0.5 * report["erasing_groups"] + 0.5)  # halves round up
    assert report["params_after"] < report["params_before"]
    import otonas

    net = otonas.load(str(tmp_path))  # model.py + model.safetensors, no pickle
    x = torch.randn(3, 1, 8, 8)
    assert net(x).shape == (3, 10)
    assert (tmp_path / "report.html").exists() and (tmp_path / "architecture.json").exists()


def test_flops_target_is_met_and_nothing_is_forced(tmp_path):
    report = search(SearchConfig(out=str(tmp_path), model="search_spaces:resnet20", model_kwargs={"size": "tiny"},
                                 data="digits", mode="prune", target_flops=0.5, epochs=2, batch_size=128,
                                 progress=False, export=False, seed=2))
    assert 0.49 <= report["flops_kept"] <= 0.5
    assert report["flops_after"] / report["flops_before"] == pytest.approx(report["flops_kept"])
    assert report["forced_groups"] == 0 and report["schedule"] == "progressive"
    assert report["accuracy_subnet"] == report["accuracy_full"] and report["max_abs_diff"] < 1e-4


def test_round_to_keeps_multiples_of_n_channels(tmp_path):
    """--round-to 8 through the CLI: report.json records it, every weight dim the run pruned is a
    multiple of 8 in the exported weights, the FLOPs target holds within 1 %, nothing is forced and
    the subnet equals the network."""
    import search_spaces
    from safetensors.torch import load_file

    p = _cli("--model", "search_spaces:resnet20", "--model-kwargs", '{"size": "default"}', "--mode", "prune",
             "--target-flops", "0.5", "--round-to", "8", "--epochs", "1", "--batch-size", "128",
             "--out", str(tmp_path), "--no-progress")
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["round_to"] == 8 and report["forced_groups"] == 0
    assert 0.49 <= report["flops_kept"] <= 0.5
    assert report["max_abs_diff"] < 1e-4
    dense = search_spaces.create("resnet20", size="default", in_chans=1, num_classes=10).state_dict()
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert set(weights) <= set(dense)
    pruned = 0
    for k, v in weights.items():
        for d, (now, was) in enumerate(zip(v.shape, dense[k].shape)):
            assert now == was or now % 8 == 0, (k, d, now, was)
            pruned += int(now != was)
    assert pruned > 0


def test_flops_target_with_both_modes_is_a_usage_error(tmp_path):
    p = _cli("--mode", "both", "--target-flops", "0.5", "--out", str(tmp_path), "--epochs", "1")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2 and "--erase-budget" in err and "--mode erase" in err and "Traceback" not in err


def test_erase_search_to_a_flops_target(tmp_path):
    """--mode erase --target-flops 0.6 on the DARTS supernet: operators erased until the subnet keeps
    at most 60% of the supernet's FLOPs, nothing forced, the subnet equal to the trained supernet."""
    report = search(SearchConfig(out=str(tmp_path), model="search_spaces:darts", data="digits", mode="erase",
                                 target_flops=0.6, epochs=2, batch_size=128, lr=0.05, progress=False, seed=1,
                                 export=False))
    assert 0.45 <= report["flops_kept"] <= 0.6
    assert report["forced_groups"] == 0 and report["erased_operators"]
    assert report["accuracy_subnet"] == report["accuracy_full"] and report["max_abs_diff"] < 1e-4
