"""Grouped-query attention at both granularities on a Llama with 8 query and 2 key/value heads
(random weights): ``gqa="kv"`` removes a key/value head with its 4 query heads, ``gqa="query"``
query head j of both groups (HF's ``repeat_kv`` then repeats each key/value head 3 times instead
of 4). In both: the families, 30% zeroed -> the built network equals the zeroed model at three
batch/length pairs, its export loads and matches, and the model built in place generates the
zeroed model's tokens."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from otonas._torchvision import prepare_torchvision

prepare_torchvision()  # transformers imports torchvision: the CPU-torch workaround must come first
transformers = pytest.importorskip("transformers")

import otonas  # noqa: E402
from otonas.testing import zero_groups_  # noqa: E402

CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
              num_key_value_heads=2, head_dim=8, vocab_size=256, max_position_embeddings=128)
# per mode: (groups of each layer's query-head family, whether k_proj is in it)
FAMILIES = {"kv": (2, True), "query": (4, False)}


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).eval()


def _heads(space, layer: int):
    return next(f for f in space.families if f"model.layers.{layer}.self_attn.q_proj" in f.layers)


def _zeroed(gqa: str, fraction: float = 0.3):
    model = _model()
    space = otonas.analyze(model, (_ids(2, 16),), gqa=gqa)
    mask = np.random.default_rng(0).random(space.num_prunable_groups) < fraction
    heads = list(_heads(space, 0).groups)
    mask[heads] = False
    mask[heads[1]] = True  # layer 0 loses exactly one attention group: KV head 1, or query head 1 of each group
    zero_groups_(space, space.removable(mask))
    return model, space


@pytest.mark.parametrize("gqa", sorted(FAMILIES))
def test_the_families_of_each_granularity(gqa):
    space = otonas.analyze(_model(), (_ids(2, 16),), gqa=gqa)
    n, with_kv = FAMILIES[gqa]
    for layer in (0, 1):
        heads = _heads(space, layer)
        assert len(heads.groups) == heads.num_channels == n, space.summary()
        assert (f"model.layers.{layer}.self_attn.k_proj" in heads.layers) == with_kv
        if gqa == "query":
            for proj in ("k_proj", "v_proj"):
                fam = next(f for f in space.families if f"model.layers.{layer}.self_attn.{proj}" in f.layers)
                assert not fam.prunable
                assert any(p.reason.startswith("key/value heads kept: gqa='query'") for p in fam.pins)
    mlp = [f for f in space.families if len(f.groups) == f.num_channels == 128]
    assert len(mlp) == 2


@pytest.mark.parametrize("gqa", sorted(FAMILIES))
def test_the_built_network_equals_the_zeroed_model(gqa):
    model, space = _zeroed(gqa)
    subnet = otonas.build(space)
    p = dict(subnet.named_parameters())
    q, k = p["model.layers.0.self_attn.q_proj.weight"], p["model.layers.0.self_attn.k_proj.weight"]
    # kv: KV head 1 and its 4 query heads gone; query: query head 1 of both groups gone
    assert (q.shape[0], k.shape[0]) == ((32, 8) if gqa == "kv" else (48, 16))
    with torch.no_grad():
        for batch, length in ((2, 16), (3, 5), (1, 23)):
            x = _ids(batch, length, seed=batch + length)
            want, got = model(x).logits, subnet(x).logits
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("gqa", sorted(FAMILIES))
def test_the_export_loads_and_matches(gqa, tmp_path):
    model, space = _zeroed(gqa)
    subnet = otonas.build(space)
    result = otonas.export(space, tmp_path, subnet=subnet)
    assert result.max_rel_diff is not None and result.max_rel_diff <= 1e-4
    loaded = otonas.load(tmp_path)
    x = _ids(3, 7, seed=4)
    with torch.no_grad():
        out = loaded(x)
        out = out["logits"] if isinstance(out, dict) else out[0] if isinstance(out, (tuple, list)) else out
        torch.testing.assert_close(out, model(x).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("gqa", sorted(FAMILIES))
def test_built_in_place_it_generates_the_zeroed_models_tokens(gqa):
    model, space = _zeroed(gqa)
    zeroed = copy.deepcopy(model)
    built = otonas.build(space, inplace=True)
    attn = built.model.layers[0].self_attn
    if gqa == "kv":
        assert attn.k_proj.out_features == 8 and attn.num_key_value_groups == 4
    else:
        assert attn.k_proj.out_features == 16 and attn.q_proj.out_features == 16 * attn.num_key_value_groups
        assert attn.num_key_value_groups == 3 and attn.o_proj.in_features == 48
    prompt = _ids(2, 6, seed=3)
    with torch.no_grad():
        want = zeroed.generate(prompt, max_new_tokens=8, do_sample=False)
        got = built.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(got, want)


@pytest.mark.parametrize("gqa", sorted(FAMILIES))
def test_sdpa_with_enable_gqa_gives_the_same_groups(gqa, monkeypatch):
    """transformers passes ``enable_gqa=True`` to sdpa instead of calling ``repeat_kv`` on some
    devices (CUDA without a mask, XPU, MPS); the environment variable forces that path here."""
    monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", "1")
    model, space = _zeroed(gqa)
    assert any(n.kwargs.get("enable_gqa") for n in space.capture.graph.nodes if n.op == "call_function")
    assert len(_heads(space, 1).groups) == FAMILIES[gqa][0]
    subnet = otonas.build(space)
    with torch.no_grad():
        for batch, length in ((2, 16), (3, 5)):
            x = _ids(batch, length, seed=batch + length)
            torch.testing.assert_close(subnet(x).logits, model(x).logits, rtol=1e-4, atol=1e-5)
