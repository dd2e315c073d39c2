"""Every search space builds, runs forward and backward, and exports; plus the
properties the supernets promise (erasable candidates, summed mixed ops, ...)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import search_spaces

NAMES = search_spaces.list()
# default-size forward passes that take more than a few seconds on 2 CPU cores
HEAVY = {"convnext_tiny", "densenet121", "resnet50", "superresnet", "stackedunets", "darts", "vgg16_bn"}
DIGITS = (1, 8, 8)  # sklearn's load_digits images


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and OpenMP spin-waiting makes
    two threads many times slower when the 2-core machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_input(name: str, shape: tuple[int, ...], batch: int = 2) -> torch.Tensor:
    entry = search_spaces.info(name)
    g = torch.Generator().manual_seed(0)
    if entry.input_dtype == torch.int64:
        vocab = search_spaces.create(name, size="tiny").head.out_features
        return torch.randint(0, vocab, (batch, *shape), generator=g)
    return torch.randn(batch, *shape, generator=g)


def expected_shape(name: str, model: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    b = x.shape[0]
    if name == "carn":
        return (b, x.shape[1], 2 * x.shape[2], 2 * x.shape[3])
    if name == "stackedunets":
        return (b, model.head1.out_channels, *x.shape[2:])
    if name == "transformer":
        return (b, x.shape[1], model.head.out_features)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return (b, head.out_features)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_forward_backward(name):
    torch.manual_seed(0)
    model = search_spaces.create(name, size="tiny").train()
    x = make_input(name, search_spaces.info(name).tiny_input_shape)
    y = model(x)
    assert y.shape == expected_shape(name, model, x)
    assert torch.isfinite(y).all()
    y.float().square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads), "some parameter is not used in forward"
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_exports(name):
    torch.manual_seed(0)
    model = search_spaces.create(name, size="tiny").eval()
    x = make_input(name, search_spaces.info(name).tiny_input_shape)
    ep = torch.export.export(model, (x,), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), rtol=1e-4, atol=1e-5)


def _default_forward(name):
    model = search_spaces.create(name).eval()
    x = make_input(name, search_spaces.info(name).input_shape, batch=1)
    with torch.no_grad():
        y = model(x)
    assert y.shape == expected_shape(name, model, x)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", [n for n in NAMES if n not in HEAVY])
def test_default_forward(name):
    _default_forward(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HEAVY & set(NAMES)))
def test_default_forward_heavy(name):
    _default_forward(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_default_backward(name):
    model = search_spaces.create(name).train()
    x = make_input(name, search_spaces.info(name).input_shape, batch=2)
    model(x).float().square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_default_exports(name):
    model = search_spaces.create(name).eval()
    x = make_input(name, search_spaces.info(name).input_shape, batch=1)
    torch.export.export(model, (x,), strict=False)


# ---------------------------------------------------------------- small inputs

@pytest.mark.parametrize("name", ["resnet20", "resnet56", "resnet18", "resnet50", "darts", "superresnet"])
def test_tiny_runs_on_digits(name):
    model = search_spaces.create(name, size="tiny", in_chans=1, num_classes=10)
    y = model(torch.randn(4, *DIGITS))
    assert y.shape == (4, 10)
    y.sum().backward()


@pytest.mark.parametrize("hw", [8, 9, 13, 32])
def test_resnet_any_size_from_8(hw):
    model = search_spaces.create("resnet20", size="tiny").eval()
    assert model(torch.randn(1, 3, hw, hw)).shape == (1, 10)


@pytest.mark.parametrize("hw", [7, 8, 11, 16])
def test_darts_tiny_odd_sizes(hw):
    """FactorizedReduce pads, so odd sizes do not break the concats."""
    model = search_spaces.create("darts", size="tiny", in_chans=1).eval()
    assert model(torch.randn(1, 1, hw, hw)).shape == (1, 10)


def test_darts_imagenet_stem():
    model = search_spaces.create("darts", size="tiny", stem="imagenet", num_classes=5).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    with pytest.raises(ValueError):
        search_spaces.create("darts", size="tiny", stem="mnist")


def test_darts_structure():
    from search_spaces.darts import CANDIDATES, Cell, MixedOp

    model = search_spaces.create("darts")  # 8 cells, C=16, 4 nodes
    cells = list(model.cells)
    assert len(cells) == 8
    assert [c.reduction for c in cells] == [False, False, True, False, False, True, False, False]
    for cell in cells:
        assert isinstance(cell, Cell)
        assert len(cell.edges) == 2 + 3 + 4 + 5
        for edge in cell.edges:
            assert isinstance(edge, MixedOp) and edge.names == CANDIDATES
    assert "none" not in CANDIDATES and len(CANDIDATES) == 7
    # no architecture parameters: every parameter lives in a conv, BN or the classifier
    for module in model.modules():
        for p_name, _ in module.named_parameters(recurse=False):
            assert isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)), (module, p_name)
    custom = search_spaces.create("darts", size="tiny", layers=4, steps=3, init_channels=6)
    assert len(custom.cells) == 4 and len(custom.cells[0].edges) == 2 + 3 + 4
    assert custom.classifier.in_features == 3 * 6 * 4  # steps * C after two doublings


def test_darts_mixed_op_is_plain_sum():
    from search_spaces.darts import MixedOp

    torch.manual_seed(0)
    for stride in (1, 2):
        op = MixedOp(4, stride).eval()
        x = torch.randn(2, 4, 8, 8)
        with torch.no_grad():
            total = sum(candidate(x) for candidate in op.ops)
            torch.testing.assert_close(op(x), total)


def _zero_(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


def _candidates(model: nn.Module):
    """(container, candidate) pairs of every summed candidate in a supernet."""
    from search_spaces.darts import MixedOp
    from search_spaces.demosupnet import MixedBlock
    from search_spaces.superresnet import SuperBlock

    for m in model.modules():
        if isinstance(m, MixedOp):
            yield from ((m, op) for op in m.ops)
        elif isinstance(m, (MixedBlock, SuperBlock)):
            yield from ((m, op) for op in m.branches)


@pytest.mark.parametrize("name", ["darts", "demosupnet", "superresnet"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_every_candidate_is_erasable(name, mode):
    """A candidate whose parameters are all zero outputs exactly zero."""
    torch.manual_seed(0)
    model = search_spaces.create(name, size="tiny")
    pairs = list(_candidates(model))
    assert len(pairs) >= 10
    for _, candidate in pairs:
        assert next(candidate.parameters(), None) is not None, "a candidate without parameters cannot be erased"
        _zero_(candidate)
        getattr(candidate, mode)()
        # the candidate's input channels, from its first conv or BN
        first = next(m for m in candidate.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)))
        c_in = first.in_channels if isinstance(first, nn.Conv2d) else first.num_features
        with torch.no_grad():
            out = candidate(torch.randn(2, c_in, 8, 8))
        assert torch.equal(out, torch.zeros_like(out)), candidate


def test_darts_tiny_erasing_all_but_skip_keeps_it_running():
    torch.manual_seed(0)
    model = search_spaces.create("darts", size="tiny", in_chans=1)
    for edge, op in _candidates(model):
        if edge.names[list(edge.ops).index(op)] != "skip_connect":
            _zero_(op)
    y = model(torch.randn(3, 1, 8, 8))
    assert y.shape == (3, 10) and torch.isfinite(y).all()


def test_stackedunets_heads_are_summed():
    torch.manual_seed(0)
    model = search_spaces.create("stackedunets", size="tiny").eval()
    x = torch.randn(1, 3, 16, 16)
    _zero_(model.head1)
    _zero_(model.head2)
    assert torch.equal(model(x), torch.zeros(1, 2, 16, 16))


def test_carn_is_x2():
    model = search_spaces.create("carn", size="tiny").eval()
    assert model(torch.randn(1, 3, 10, 12)).shape == (1, 3, 20, 24)
    assert any(isinstance(m, nn.PixelShuffle) for m in model.modules())


def test_transformer_is_causal():
    torch.manual_seed(0)
    model = search_spaces.create("transformer", size="tiny").eval()
    a = torch.randint(0, 32, (1, 12))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % 32
    with torch.no_grad():
        ya, yb = model(a), model(b)
    torch.testing.assert_close(ya[:, :8], yb[:, :8])
    assert not torch.allclose(ya[:, 8:], yb[:, 8:])
    enc = search_spaces.create("transformer", size="tiny", causal=False).eval()
    with torch.no_grad():
        assert not torch.allclose(enc(a)[:, :8], enc(b)[:, :8])
    assert any(isinstance(m, nn.MultiheadAttention) and m.batch_first for m in model.modules())


def test_resnet_option_b_shortcuts():
    from search_spaces.resnet_cifar import BasicBlock

    model = search_spaces.create("resnet20")
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 9
    projections = [b for b in blocks if not isinstance(b.shortcut, nn.Identity)]
    assert len(projections) == 2
    for b in projections:
        assert isinstance(b.shortcut[0], nn.Conv2d) and b.shortcut[0].kernel_size == (1, 1)
        assert isinstance(b.shortcut[1], nn.BatchNorm2d)
    # CIFAR stem: 3x3 stride 1, no max-pool, for the ImageNet-depth ResNets too
    for name in ("resnet18", "resnet50"):
        model = search_spaces.create(name, size="tiny")
        assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)
        assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_tiny_resnet20_learns_digits():
    """The tiny variants are meant to be trained in seconds on CPU."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    x, y = x[:512], y[:512]
    torch.manual_seed(0)
    model = search_spaces.create("resnet20", size="tiny", in_chans=1, num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    with torch.no_grad():
        first = loss_fn(model.eval()(x), y).item()
    model.train()
    for _ in range(4):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            loss_fn(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    with torch.no_grad():
        logits = model.eval()(x)
    last = loss_fn(logits, y).item()
    accuracy = (logits.argmax(1) == y).float().mean().item()
    assert last < 0.6 * first and accuracy > 0.6, (first, last, accuracy)
