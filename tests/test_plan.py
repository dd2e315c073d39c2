"""The Plan: one removal decision that build, export, report and search consume, made once."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import torch

import otonas
import search_spaces
from otonas.analysis import Costs, Plan, SearchSpace
from otonas.errors import UsageError
from otonas.testing import random_valid_erasure, zero_groups_
from tiny_models import CASES, inputs

PRUNE_CASES = [c for c in CASES if c[0] in ("conv_chain", "residual", "concat_split", "attention", "squeeze_excite")]


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * max(1.0, ref.abs().max().item()))


def _zeroed(factory, shapes, dtype, fraction=0.5, seed=1):
    model = factory().eval()
    space = otonas.analyze(model, inputs(shapes, dtype))
    rng = np.random.default_rng(seed)
    mask = np.zeros(space.num_prunable_groups, dtype=bool)
    mask[rng.choice(space.num_prunable_groups, size=max(1, int(fraction * space.num_prunable_groups)),
                    replace=False)] = True
    zero_groups_(space, space.removable(mask))
    return model, space


@pytest.mark.parametrize("name,factory,shapes,dtype", PRUNE_CASES, ids=[c[0] for c in PRUNE_CASES])
def test_plan_builds_what_the_old_path_built(name, factory, shapes, dtype):
    model, space = _zeroed(factory, shapes, dtype)
    plan = space.plan()
    assert np.array_equal(plan.removed, space.removable(space.zero_groups()))
    assert plan.erased is None or not plan.erased.any()
    sub = otonas.build(space, plan)
    old = otonas.build(space, removed=space.zero_groups())  # the keyword form makes the same plan
    assert {k: v.shape for k, v in sub.state_dict().items()} == {k: v.shape for k, v in old.state_dict().items()}
    for batch in (1, 3):
        xs = inputs(shapes, dtype, batch=batch, seed=batch)
        with torch.no_grad():
            ref, out, out_old = model(*xs), sub(*xs), old(*xs)
        _close(out, ref)
        torch.testing.assert_close(out, out_old, rtol=0, atol=0)
    assert plan.before == space.costs()
    assert plan.after == space.costs(plan.removed, plan.erased)
    assert plan.after.params == sum(p.numel() for p in sub.parameters())
    assert dict(plan.kept) == {k: tuple(v) for k, v in space.kept_shapes(plan.removed, plan.erased).items()}
    assert plan.removed_groups == int(plan.removed.sum()) and 0 < plan.group_sparsity < 1


def test_plan_with_erasure_matches_the_weights_and_the_builder():
    model = search_spaces.create("darts", size="tiny").eval()
    shape = search_spaces.info("darts").tiny_input_shape
    x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(0))
    space = otonas.analyze(model, (x,))
    erased = random_valid_erasure(space, 0.4, np.random.default_rng(3))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for i in np.nonzero(erased)[0]:
            for f in space.erasing_groups[i].params:
                params[f].zero_()
    plan = space.plan()
    assert np.array_equal(plan.erased, space.erasable(space.zero_erasing_groups()))
    assert plan.erased.any() and plan.dead == frozenset(space.segments.dead_nodes(plan.erased)[0])
    assert plan.erased_groups == tuple(np.nonzero(plan.erased)[0].tolist())
    assert plan.after == space.costs(plan.removed, plan.erased) and plan.after.params < plan.before.params
    assert not set(plan.kept) & plan.dead
    sub = otonas.build(space, plan)
    xt = torch.randn((3, *shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _close(sub(xt), model(xt))
    # the explicit form: the caller's own decision, checked like the builder's
    mine = space.plan(removed=np.zeros(space.num_prunable_groups, dtype=bool), erased=plan.erased)
    assert np.array_equal(mine.erased, plan.erased) and mine.dead == plan.dead
    with pytest.raises(UsageError, match="shape"):
        space.plan(erased=np.zeros(space.num_erasing_groups + 1, dtype=bool))


def test_plan_is_read_only_and_keeps_no_reference_to_the_callers_arrays():
    _, space = _zeroed(*[c for c in CASES if c[0] == "conv_chain"][0][1:])
    mine = space.zero_groups()
    plan = space.plan(removed=mine)
    for a in (plan.removed, plan.removed_root):
        assert a is not None and not a.flags.writeable
        with pytest.raises(ValueError):
            a[0] = not a[0]
    mine[:] = False  # the caller's array is a copy's source, not the plan's own
    assert plan.removed.any()
    with pytest.raises(TypeError):
        plan.kept["x"] = (1,)  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.after = Costs(0, 0)  # type: ignore[misc]
    with pytest.raises(UsageError, match="not both"):
        otonas.build(space, plan, removed=mine)
    assert isinstance(plan, otonas.Plan) and otonas.Plan is Plan


def test_export_with_a_plan_and_a_subnet_decides_and_builds_nothing(tmp_path, monkeypatch):
    model, space = _zeroed(*[c for c in CASES if c[0] == "residual"][0][1:])
    plan = space.plan()
    sub = otonas.build(space, plan)
    calls = _count(monkeypatch)
    res = otonas.export(space, tmp_path / "a", plan=plan, subnet=sub)
    assert calls == {"plan": 0, "build": 0}
    assert res.max_rel_diff is not None and res.max_rel_diff < 1e-4
    assert res.parameters == plan.after.params
    res = otonas.export(space, tmp_path / "b", plan=plan)
    assert calls == {"plan": 0, "build": 1}
    assert (tmp_path / "a" / "architecture.json").read_text().replace(str(tmp_path / "a"), "") == \
        (tmp_path / "b" / "architecture.json").read_text().replace(str(tmp_path / "b"), "")


def _count(monkeypatch) -> dict[str, int]:
    """Count SearchSpace.plan and otonas.build calls, wherever build was imported from."""
    calls = {"plan": 0, "build": 0}
    real_plan, real_build = SearchSpace.plan, otonas.build

    def plan(self, *a, **kw):
        calls["plan"] += 1
        return real_plan(self, *a, **kw)

    def build(*a, **kw):
        calls["build"] += 1
        return real_build(*a, **kw)

    monkeypatch.setattr(SearchSpace, "plan", plan)
    monkeypatch.setattr(sys.modules["otonas.build"], "build", build)  # `from ..build import build` at call time
    monkeypatch.setitem(sys.modules["otonas.export"].export.__globals__, "build", build)  # export's own import of it
    return calls


def test_one_search_builds_once_and_decides_once_at_the_end(tmp_path, monkeypatch):
    from otonas.search import SearchConfig, search

    calls = _count(monkeypatch)
    epochs = 2
    report = search(SearchConfig(out=str(tmp_path), model="search_spaces:resnet20", model_kwargs={"size": "tiny"},
                                 data="digits", mode="prune", target_sparsity=0.5, epochs=epochs, batch_size=128,
                                 lr=0.1, progress=False, seed=3))
    assert calls["build"] == 1
    assert calls["plan"] == epochs + 1  # one per epoch's figures, one at the end
    assert report["accuracy_subnet"] == report["accuracy_full"] and report["max_abs_diff"] < 1e-4
    assert (tmp_path / "model.py").exists() and (tmp_path / "report.html").exists()


def test_report_from_a_plan_is_the_report_from_its_masks(tmp_path):
    from otonas.report import layer_channels, write_report_html

    model = search_spaces.create("darts", size="tiny").eval()
    x = torch.randn((2, *search_spaces.info("darts").tiny_input_shape), generator=torch.Generator().manual_seed(0))
    space = otonas.analyze(model, (x,))
    erased = random_valid_erasure(space, 0.3, np.random.default_rng(5))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for i in np.nonzero(erased)[0]:
            for f in space.erasing_groups[i].params:
                params[f].zero_()
    plan = space.plan()
    assert layer_channels(space, plan=plan) == layer_channels(space, removed=plan.removed, erased=plan.erased)
    report = {"model": "darts", "params_before": plan.before.params, "params_after": plan.after.params}
    write_report_html(tmp_path / "a.html", report=report, history=[], space=space, plan=plan)
    write_report_html(tmp_path / "b.html", report=report, history=[], space=space, removed=plan.removed,
                      erased=plan.erased)
    assert (tmp_path / "a.html").read_text() == (tmp_path / "b.html").read_text()


@pytest.mark.parametrize("name", ["resnet20", "darts"])
def test_plan_layer_table_is_what_the_built_network_has(name):
    """Plan.layers against the built subnet: every live layer's weight has the channels the
    table says, an erased layer has no weight left, and the table's groups lost include
    those that dead concat inputs take away (Plan.gone)."""
    model = search_spaces.create(name, size="tiny").eval()
    x = torch.randn((2, *search_spaces.info(name).tiny_input_shape), generator=torch.Generator().manual_seed(0))
    space = otonas.analyze(model, (x,))
    rng = np.random.default_rng(2)
    if space.num_erasing_groups:
        erased = random_valid_erasure(space, 0.4, rng)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for i in np.nonzero(erased)[0]:
                for f in space.erasing_groups[i].params:
                    params[f].zero_()
    if space.num_prunable_groups:
        zero_groups_(space, space.removable(rng.random(space.num_prunable_groups) < 0.4))
    plan = space.plan()
    assert plan.layers and all(isinstance(r.channels_after, int) for r in plan.layers)
    if plan.removed is not None:
        assert plan.gone is not None and (plan.gone >= plan.removed).all()
    sub = otonas.build(space, plan)
    built = {k: v.shape for k, v in sub.named_parameters()}
    full = dict(model.named_parameters())
    checked = 0
    for r in plan.layers:
        w = f"{r.layer}.weight"
        assert r.channels_before == full[w].shape[0] if w in full else True, r
        if r.erased:
            assert r.channels_after == 0 and w not in built, r
        elif w in built:
            assert built[w][0] == r.channels_after, (r, built[w])
            checked += 1
    assert checked >= len([r for r in plan.layers if not r.erased]) // 2
    shrunk = [r for r in plan.layers if 0 < r.channels_after < r.channels_before]
    assert shrunk  # the check above saw pruned layers, not only full ones
