"""``otonas.build(space, inplace=True)``: the user's own model, sliced, keeps its class and its
methods; its outputs are the graph build's; a pruned causal LM still generates the same tokens."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import otonas
from otonas.build import Resizer, register_resizer
from otonas.build._inplace import Sliced, _attention_attrs
from otonas.errors import BuildError
from otonas.testing import zero_groups_
from tiny_models import CASES, inputs


def _transformers():
    import otonas._torchvision as tv

    tv.prepare_torchvision()  # transformers imports torchvision, which needs preparing here
    return pytest.importorskip("transformers")


def _llama(heads=4, kv_heads=4):
    T = _transformers()
    return T.LlamaForCausalLM(T.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                            num_attention_heads=heads, num_key_value_heads=kv_heads,
                                            max_position_embeddings=64, use_cache=False))


def _llama_gqa():
    return _llama(heads=8, kv_heads=4)


def _gpt2():
    T = _transformers()
    return T.GPT2LMHeadModel(T.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                          use_cache=False))


def _bert():
    T = _transformers()
    return T.BertModel(T.BertConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, max_position_embeddings=64))


def _mask(space, fraction=0.3, seed=0):
    rng = np.random.default_rng(seed)
    n = space.num_prunable_groups
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=max(1, int(round(fraction * n))), replace=False)] = True
    return mask


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) or hasattr(out, "to_tuple") else out


def _close(a, b):
    a, b = _first(a), _first(b)
    assert a.shape == b.shape
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * max(1.0, a.abs().max().item()))


def _sizes_agree(model):
    """Every layer's size attributes say what its weight holds."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            assert (m.out_features, m.in_features) == tuple(m.weight.shape), name
        if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed:
            assert m.out_channels == m.weight.shape[0] and m.in_channels == m.weight.shape[1] * m.groups, name
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
            assert m.num_features == m.running_mean.shape[0], name
        if isinstance(m, nn.LayerNorm) and m.weight is not None:
            assert tuple(m.normalized_shape) == tuple(m.weight.shape), name
        if isinstance(m, nn.Embedding):
            assert (m.num_embeddings, m.embedding_dim) == tuple(m.weight.shape), name


LMS = [("llama", _llama), ("llama_gqa", _llama_gqa), ("gpt2", _gpt2), ("bert", _bert)]


@pytest.mark.parametrize("name,factory", LMS, ids=[n for n, _ in LMS])
def test_transformers_inplace_matches_graph_build_and_generates(name, factory):
    torch.manual_seed(0)
    model = factory().eval()
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    space = otonas.analyze(model, (ids,))
    assert space.num_prunable_groups > 0
    zero_groups_(space, _mask(space))
    assert not space.zero_erasing_groups().any()  # the seed erases nothing (in place cannot yet)
    zeroed = copy.deepcopy(model)
    graph = otonas.build(space)
    cls, before = type(model), sum(p.numel() for p in model.parameters())

    out = otonas.build(space, inplace=True)

    assert out is model and type(out) is cls
    assert sum(p.numel() for p in model.parameters()) < before
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in graph.parameters())
    _sizes_agree(model)
    with torch.no_grad():
        _close(graph(ids), model(ids))
        for batch, length in ((1, 16), (3, 5), (2, 23)):
            x = torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(length))
            _close(zeroed(x), model(x))
    if name != "bert":
        model.config.use_cache = zeroed.config.use_cache = True  # generate() with its KV cache
        prompt = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(2))
        want = zeroed.generate(prompt, max_new_tokens=8, do_sample=False)
        got = model.generate(prompt, max_new_tokens=8, do_sample=False)
        assert got.shape == (1, 13)
        assert torch.equal(got, want)


def test_llama_head_attributes_follow_the_heads():
    model = _llama_gqa().eval()  # 8 query heads, 4 key/value heads: one group = 1 KV head + 2 query heads
    space = otonas.analyze(model, (torch.randint(0, 128, (2, 8)),))
    mask = np.zeros(space.num_prunable_groups, dtype=bool)
    for layer in (0, 1):
        heads = next(f for f in space.families if f"model.layers.{layer}.self_attn.q_proj" in f.layers)
        mask[list(heads.groups[:1])] = True  # one KV group of each layer
    zero_groups_(space, mask)
    zeroed = copy.deepcopy(model)
    otonas.build(space, inplace=True)
    for layer in model.model.layers:
        attn = layer.self_attn
        assert attn.q_proj.out_features == 6 * 8 and attn.k_proj.out_features == 3 * 8
        assert attn.num_key_value_groups == 2 and attn.head_dim == 8
    # every layer agrees: the config says so too (it states head_dim, which stays)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads, model.config.head_dim) == (6, 3, 8)
    assert model.config.intermediate_size == 128
    model.config.use_cache = zeroed.config.use_cache = True
    prompt = torch.randint(0, 128, (2, 4))
    assert torch.equal(model.generate(prompt, max_new_tokens=6, do_sample=False),
                       zeroed.generate(prompt, max_new_tokens=6, do_sample=False))


def test_gpt2_packed_attention_attributes():
    model = _gpt2().eval()
    space = otonas.analyze(model, (torch.randint(0, 128, (2, 8)),))
    heads = next(f for f in space.families if "transformer.h.1.attn.c_attn" in f.layers)
    mask = np.zeros(space.num_prunable_groups, dtype=bool)
    mask[list(heads.groups[:2])] = True
    zero_groups_(space, mask)
    otonas.build(space, inplace=True)
    attn = model.transformer.h[1].attn
    assert (attn.num_heads, attn.split_size, attn.c_attn.nf) == (2, 32, 96)
    assert tuple(attn.c_attn.weight.shape) == (64, 96)


def test_export_of_an_inplace_built_model(tmp_path):
    model = _llama().eval()
    ids = torch.randint(0, 128, (2, 16))
    space = otonas.analyze(model, (ids,))
    zero_groups_(space, _mask(space))
    otonas.build(space, inplace=True)
    result = otonas.export(model, tmp_path, example_inputs=(ids,))
    assert (tmp_path / "model.py").exists() and (tmp_path / "model.safetensors").exists()
    assert result.parameters == sum(p.numel() for p in model.parameters())
    net = otonas.load(tmp_path)
    with torch.no_grad():
        _close(model(ids), net(ids))


# --- plain PyTorch ---------------------------------------------------------------------------
PLAIN = [c for c in CASES if c[0] not in ("concat_split", "attention")]  # those two: see the error tests


@pytest.mark.parametrize("name,factory,shapes,dtype", PLAIN, ids=[c[0] for c in PLAIN])
def test_plain_models_inplace(name, factory, shapes, dtype):
    model = factory().eval()
    space = otonas.analyze(model, inputs(shapes, dtype))
    zero_groups_(space, _mask(space, seed=1))
    keep = np.zeros(space.num_erasing_groups, dtype=bool)  # erase nothing: zero operators stay, exactly zero
    zeroed = copy.deepcopy(model)
    graph = otonas.build(space, erased=keep)
    cls, before = type(model), sum(p.numel() for p in model.parameters())
    otonas.build(space, inplace=True, erased=keep)
    assert type(model) is cls and sum(p.numel() for p in model.parameters()) < before
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in graph.parameters())
    _sizes_agree(model)
    for batch in (1, 3):
        xs = inputs(shapes, dtype, batch=batch, seed=batch)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("error")  # InstanceNorm warns when num_features is not its input's
            _close(graph(*xs), model(*xs))
            _close(zeroed(*xs), model(*xs))


def test_sequential_mlp_and_a_torchvision_cnn():
    import otonas._torchvision

    otonas._torchvision.prepare_torchvision()
    tv = pytest.importorskip("torchvision")
    for model, x in ((nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 24), nn.LayerNorm(24), nn.GELU(),
                                    nn.Linear(24, 5)), torch.randn(4, 12)),
                     (nn.Sequential(nn.Conv1d(3, 8, 3), nn.InstanceNorm1d(8), nn.ReLU(), nn.Conv1d(8, 4, 3)),
                      torch.randn(2, 3, 10)),
                     (tv.models.resnet18(num_classes=10), torch.randn(2, 3, 32, 32))):
        model.eval()
        space = otonas.analyze(model, (x,))
        zero_groups_(space, _mask(space, seed=3))
        keep = np.zeros(space.num_erasing_groups, dtype=bool)
        zeroed = copy.deepcopy(model)
        before = sum(p.numel() for p in model.parameters())
        otonas.build(space, inplace=True, erased=keep)
        assert sum(p.numel() for p in model.parameters()) < before
        _sizes_agree(model)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("error")  # InstanceNorm warns when num_features is not its input's
            _close(zeroed(x), model(x))
            _close(zeroed(x[:1]), model(x[:1]))


# --- errors: named, and the model left as it was ----------------------------------------------
def _snapshot(model):
    return {k: (v, v.detach().clone()) for k, v in model.state_dict(keep_vars=True).items()}


def _unchanged(model, snap):
    now = model.state_dict(keep_vars=True)
    assert now.keys() == snap.keys()
    for k, (obj, val) in snap.items():
        assert now[k] is obj and torch.equal(now[k], val), k


class _Scaled(nn.Module):
    """A layer otonas has no resizer for, whose forward reads its width from an attribute."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.scale = nn.Parameter(torch.rand(width) + 0.5)

    def forward(self, x):
        return x.reshape(-1, self.width) * self.scale


class _Hidden(nn.Module):
    """The same, with the width where otonas cannot see it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.sizes = {"width": width}
        self.scale = nn.Parameter(torch.rand(width) + 0.5)

    def forward(self, x):
        return x.reshape(-1, self.sizes["width"]) * self.scale


@pytest.mark.parametrize("layer,match", [(_Scaled, r"module '1' \(_Scaled\).*no resizer.*width"),
                                         (_Hidden, r"module '1' \(_Hidden\)")])
def test_an_unknown_layer_is_named_and_the_model_left_unchanged(layer, match):
    model = nn.Sequential(nn.Linear(6, 16), layer(16), nn.ReLU(), nn.Linear(16, 3)).eval()
    space = otonas.analyze(model, (torch.randn(2, 6),))
    assert space.num_prunable_groups == 16
    zero_groups_(space, _mask(space, 0.5))
    snap = _snapshot(model)
    with pytest.raises(BuildError, match=match):
        otonas.build(space, inplace=True)
    _unchanged(model, snap)
    assert model[0].out_features == 16 and model[1](torch.randn(2, 16)).shape == (2, 16)


def test_a_forward_with_literal_sizes_is_refused():
    factory, shapes, dtype = next((c[1], c[2], c[3]) for c in CASES if c[0] == "concat_split")
    model = factory().eval()
    space = otonas.analyze(model, inputs(shapes, dtype))
    zero_groups_(space, _mask(space, seed=1))
    snap = _snapshot(model)
    with pytest.raises(BuildError, match=r"fails on the example inputs in the model itself \(Concat\)"):
        otonas.build(space, inplace=True, erased=np.zeros(space.num_erasing_groups, dtype=bool))
    _unchanged(model, snap)


def test_multihead_attention_heads_are_refused():
    factory, shapes, dtype = next((c[1], c[2], c[3]) for c in CASES if c[0] == "attention")
    model = factory().eval()
    space = otonas.analyze(model, inputs(shapes, dtype))
    zero_groups_(space, _mask(space, seed=1))
    snap = _snapshot(model)
    with pytest.raises(BuildError, match=r"module 'mha' \(MultiheadAttention\)"):
        otonas.build(space, inplace=True, erased=np.zeros(space.num_erasing_groups, dtype=bool))
    _unchanged(model, snap)


def test_erasing_an_operator_in_place_is_refused():
    model = _llama().eval()
    space = otonas.analyze(model, (torch.randint(0, 128, (2, 8)),))
    mlp = next(f for f in space.families if "model.layers.1.mlp.gate_proj" in f.layers)
    mask = np.zeros(space.num_prunable_groups, dtype=bool)
    mask[list(mlp.groups)] = True
    zero_groups_(space, mask)
    for p in model.model.layers[1].post_attention_layernorm.parameters():
        p.data.zero_()  # the whole MLP branch is zero: the graph build erases it
    assert space.zero_erasing_groups().any()
    snap = _snapshot(model)
    with pytest.raises(BuildError, match="cannot erase operators"):
        otonas.build(space, inplace=True)
    _unchanged(model, snap)
    # keeping the zero branch (erased: none) slices its channels down to one, exactly
    zeroed = copy.deepcopy(model)
    otonas.build(space, inplace=True, erased=np.zeros(space.num_erasing_groups, dtype=bool))
    assert model.model.layers[1].mlp.up_proj.out_features == 1
    assert model.model.layers[1].mlp.intermediate_size == 1
    x = torch.randint(0, 128, (2, 11))
    with torch.no_grad():
        _close(zeroed(x), model(x))


class _GQA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.num_key_value_heads, self.head_dim, self.num_key_value_groups = 4, 2, 2, 2
        self.q_proj, self.k_proj = nn.Linear(8, 8), nn.Linear(8, 4)


def test_query_heads_removed_unevenly_across_kv_groups_are_an_error():
    def q(keep_heads):
        m = np.repeat(np.array(keep_heads, dtype=bool), 2)
        return {"q_proj": {"weight": Sliced((8, 8), (m, np.ones(8, dtype=bool)))}}

    attn = _GQA()
    assert _attention_attrs("attn", attn, q([1, 0, 1, 0])) == {"num_heads": 2, "num_key_value_heads": 2,
                                                              "num_key_value_groups": 1}
    with pytest.raises(BuildError, match=r"attention module 'attn' \(_GQA\).*unevenly.*\[1, 2\]"):
        _attention_attrs("attn", attn, q([1, 0, 1, 1]))


class _Width(nn.Module):
    """Like ``_Scaled``, with a resizer registered for it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.scale = nn.Parameter(torch.rand(width) + 0.5)

    def forward(self, x):
        return x.reshape(-1, self.width) * self.scale


@register_resizer(_Width)
class _WidthResizer(Resizer):
    def attributes(self, module, tensors):
        return {"width": tensors["scale"].new[0]}


def test_a_registered_resizer_serves_its_layer():
    model = nn.Sequential(nn.Linear(6, 16), _Width(16), nn.ReLU(), nn.Linear(16, 3)).eval()
    space = otonas.analyze(model, (torch.randn(2, 6),))
    zero_groups_(space, _mask(space, 0.5))
    zeroed = copy.deepcopy(model)
    otonas.build(space, inplace=True)
    assert model[1].width == 8 == model[0].out_features
    x = torch.randn(5, 6)
    with torch.no_grad():
        _close(zeroed(x), model(x))
