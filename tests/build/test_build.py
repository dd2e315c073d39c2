"""Built subnets against the model they came from: same outputs, smaller parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import otonas
from otonas.testing import zero_groups_
from tiny_models import CASES, inputs


def _random_mask(space, fraction, seed):
    rng = np.random.default_rng(seed)
    n = space.num_prunable_groups
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=max(1, int(round(fraction * n))), replace=False)] = True
    return space.removable(mask)


@pytest.mark.parametrize("name,factory,shapes,dtype", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("fraction", [0.3, 0.7])
def test_build_matches_original(name, factory, shapes, dtype, fraction):
    model = factory().eval()
    space = otonas.analyze(model, inputs(shapes, dtype))
    assert space.num_prunable_groups > 0, space.summary()
    mask = _random_mask(space, fraction, seed=1)
    zero_groups_(space, mask)
    subnet = otonas.build(space)
    for batch in (1, 3):
        xs = inputs(shapes, dtype, batch=batch, seed=batch)
        with torch.no_grad():
            ref, out = model(*xs), subnet(*xs)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * max(1.0, ref.abs().max().item()))
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in subnet.parameters())
    assert after < before
    # the parameter count the space predicts for this zero pattern is what the builder produced
    assert space.costs(mask).params == after


def test_build_reads_zeros_from_the_model_and_keeps_nonzero_groups():
    model = otonas_model = __import__("tiny_models").ConvChain().eval()
    space = otonas.analyze(otonas_model, inputs([(2, 3, 8, 8)], torch.float32))
    # nothing is zero: the built network has exactly the original sizes
    full = otonas.build(space)
    assert sum(p.numel() for p in full.parameters()) == sum(p.numel() for p in model.parameters())
    # zero one channel of c1 (its family = c1 out, b1, c2 in-columns): one channel fewer
    fam = next(f for f in space.families if "c1" in f.layers)
    mask = np.zeros(space.num_prunable_groups, dtype=bool)
    mask[fam.groups[0]] = True
    zero_groups_(space, mask)
    sub = otonas.build(space)
    assert dict(sub.named_parameters())["c1.weight"].shape == (7, 3, 3, 3)
    assert dict(sub.named_parameters())["c2.weight"].shape == (12, 7, 3, 3)
    assert dict(sub.named_buffers())["b1.running_mean"].shape == (7,)


def test_a_layer_never_loses_its_last_channel():
    model = __import__("tiny_models").ConvChain().eval()
    space = otonas.analyze(model, inputs([(2, 3, 8, 8)], torch.float32))
    everything = np.ones(space.num_prunable_groups, dtype=bool)
    removed = space.removable(everything)
    for fam in space.families:
        if fam.groups:  # ConvChain: one layer per family
            assert (~removed[list(fam.groups)]).sum() == 1
    zero_groups_(space, everything)
    sub = otonas.build(space)
    x = inputs([(3, 3, 8, 8)], torch.float32)
    torch.testing.assert_close(sub(*x), model(*x), rtol=1e-4, atol=1e-6)


class _ClassToken(torch.nn.Module):
    """Full slices of the batch: the static export folds them into ``alias`` or drops them,
    the free-batch export keeps them as ``slice``; the builder matches the two graphs."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.mid, self.fc = torch.nn.Linear(6, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.emb(x))[:, :, :]
        h = torch.relu(self.mid(h.reshape(h.shape[0], -1, 8)))
        return self.fc(h[:, 0]) + self.fc(h[:, 1:].mean(1))


def test_analysis_is_static_and_the_built_network_takes_any_batch():
    model = _ClassToken().eval()
    space = otonas.analyze(model, (torch.randn(2, 4, 6),))
    # the analysed graph has static shapes: no symbolic batch in it
    assert not any(n.target is torch.ops.aten.sym_size.int for n in space.capture.graph.nodes)
    mask = _random_mask(space, 0.5, seed=0)
    zero_groups_(space, mask)
    subnet = otonas.build(space)
    assert space.capture.dynamic_batch
    assert any(n.target is torch.ops.aten.sym_size.int for n in subnet.graph.nodes)
    assert sum(p.numel() for p in subnet.parameters()) == space.costs(mask).params
    for batch in (1, 2, 5):
        x = torch.randn(batch, 4, 6)
        with torch.no_grad():
            torch.testing.assert_close(subnet(x), model(x), rtol=1e-4, atol=1e-5)
    # the free-batch export is made once per space
    assert otonas.build(space).graph is not subnet.graph
    assert space.capture.build_program() is space.capture.build_program()


def test_a_batch_of_one_builds_for_that_batch_only():
    model = __import__("tiny_models").ConvChain().eval()
    space = otonas.analyze(model, inputs([(1, 3, 8, 8)], torch.float32))
    zero_groups_(space, _random_mask(space, 0.3, seed=0))
    subnet = otonas.build(space)
    assert not space.capture.dynamic_batch  # torch specialises a batch of 1
    x = inputs([(1, 3, 8, 8)], torch.float32, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(subnet(*x), model(*x), rtol=1e-4, atol=1e-5)


def test_a_free_batch_graph_that_does_not_match_falls_back_to_the_example_batch(monkeypatch):
    import otonas.capture._export as capture_export

    real = capture_export.match_nodes
    monkeypatch.setattr(capture_export, "match_nodes",
                        lambda a, b: None if any(n.target is torch.ops.aten.sym_size.int for n in b.graph.nodes)
                        else real(a, b))
    model = _ClassToken().eval()
    space = otonas.analyze(model, (torch.randn(2, 4, 6),))
    zero_groups_(space, _random_mask(space, 0.5, seed=0))
    with pytest.warns(UserWarning, match="takes the example's batch size only"):
        subnet = otonas.build(space)
    assert not space.capture.dynamic_batch
    x = torch.randn(2, 4, 6)
    with torch.no_grad():
        torch.testing.assert_close(subnet(x), model(x), rtol=1e-4, atol=1e-5)
