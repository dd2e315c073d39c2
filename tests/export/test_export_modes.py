"""The exported model keeps the original's training behaviour: batch statistics and running
stats in BatchNorm, active dropout, gradients on ordinary parameters."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import otonas
from export_helpers import random_zero
from otonas.export import export, load


class Net(nn.Module):
    def __init__(self, hidden_dropout: bool = True) -> None:
        super().__init__()
        self.drop_in = nn.Dropout(0.2)  # on the input, whose channels are never pruned
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=None)
        self.drop = nn.Dropout(0.5) if hidden_dropout else nn.Identity()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.drop_in(x)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(self.drop(x.mean((2, 3))))


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.mha = nn.MultiheadAttention(16, 4, dropout=0.3, batch_first=True)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        return self.out(h + self.mha(h, h, h, need_weights=False)[0])


def _export(model, x, tmp_path, zero=0.0):
    space = otonas.analyze(model.eval(), (x,))
    if zero:
        random_zero(space, zero, seed=3)
    export(space, tmp_path)
    return load(tmp_path)


def _same_seed(a, b, x, seed=7):
    torch.manual_seed(seed)
    ya = a(x)
    torch.manual_seed(seed)
    yb = b(x)
    return ya, yb


def test_train_mode_matches_the_original_step_for_step(tmp_path):
    torch.manual_seed(0)
    model = Net()
    x = torch.randn(4, 3, 6, 6)
    exported = _export(model, x, tmp_path)
    src = (tmp_path / "model.py").read_text()
    assert "nn.Dropout(0.5)" in src and "nn.Dropout(0.2)" in src and "momentum=None" in src
    model.train(), exported.train()
    for step in range(3):
        ya, yb = _same_seed(model, exported, x, seed=step)
        torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-6)
        ya.square().sum().backward()
        yb.square().sum().backward()
    for (name, a), (name_b, b) in zip(model.state_dict().items(), exported.state_dict().items()):
        assert name == name_b
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)  # running stats, batches tracked
    grads = dict(exported.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    model.eval(), exported.eval()
    torch.testing.assert_close(exported(x), model(x), rtol=1e-5, atol=1e-6)


def test_pruned_export_in_train_mode_matches_the_zeroed_original(tmp_path):
    torch.manual_seed(0)
    model = Net(hidden_dropout=False)
    x = torch.randn(4, 3, 6, 6)
    exported = _export(model, x, tmp_path, zero=0.4)
    assert exported.bn1.num_features < 8 or exported.bn2.num_features < 8
    model.train(), exported.train()
    ya, yb = _same_seed(model, exported, x)
    # a zeroed channel stays zero under batch statistics too, so the outputs agree
    torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-5)
    for bn in ("bn1", "bn2"):
        orig, new = getattr(model, bn), getattr(exported, bn)
        kept = orig.weight.detach() != 0
        torch.testing.assert_close(new.running_mean, orig.running_mean[kept])
        torch.testing.assert_close(new.running_var, orig.running_var[kept])
        assert int(new.num_batches_tracked) == 1


def test_dropout_and_batch_statistics_are_live_in_train_mode_only(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6)
    exported = _export(Net(), x, tmp_path, zero=0.4)
    exported.eval()
    with torch.no_grad():
        e1, e2 = exported(x), exported(x)
    torch.testing.assert_close(e1, e2, rtol=0, atol=0)
    before = exported.bn1.running_mean.clone()
    exported.train()
    t1, t2 = exported(x), exported(x)
    assert not torch.equal(t1, t2)  # dropout draws new masks
    assert not torch.equal(exported.bn1.running_mean, before)  # running stats move
    exported.eval()
    assert not torch.equal(exported(x), e1)  # and eval now uses them


def test_gradients_reach_every_parameter(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6)
    exported = _export(Net(), x, tmp_path, zero=0.4)
    params = list(exported.parameters())
    assert params and all(isinstance(p, nn.Parameter) and p.requires_grad for p in params)
    exported.train()
    exported(x).logsumexp(-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert all(p.grad.abs().sum() > 0 for p in params)
    exported.eval()
    before = exported(x).detach()
    torch.optim.SGD(params, lr=0.1).step()
    assert not torch.allclose(exported(x), before)


def test_attention_dropout_comes_back_in_train_mode(tmp_path):
    torch.manual_seed(0)
    model = Attn()
    x = torch.randn(2, 5, 6)
    exported = _export(model, x, tmp_path)
    assert "dropout_p=0.3 if self.training else 0.0" in (tmp_path / "model.py").read_text()
    model.train(), exported.train()
    ya, yb = _same_seed(model, exported, x)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-6)
    assert not torch.equal(exported(x), exported(x))
