"""``otonas.search.prepare``: the setup ``otonas search`` and ``otonas tune`` share."""

from __future__ import annotations

import pytest
import torch

from otonas.errors import UsageError
from otonas.search import SearchConfig, prepare


@pytest.mark.parametrize("model, data, mode, optimizer", [
    ("search_spaces:resnet20", "synthetic", "prune", "dhspg"),
    ("search_spaces:darts", "digits", "erase", "h2spg"),
])
def test_prepare_resolves_the_mode_and_leaves_the_config(model, data, mode, optimizer):
    cfg = SearchConfig(model=model, data=data, device="cpu")
    setup = prepare(cfg)
    assert cfg.mode is None and cfg.optimizer is None  # the caller's config is not touched
    assert (setup.config.mode, setup.config.optimizer) == (mode, optimizer)
    assert setup.example.shape[0] == 2 and setup.device == torch.device("cpu")
    assert setup.space.model is setup.model
    # the same seed, the same model
    again = prepare(cfg)
    assert all(torch.equal(a, b) for a, b in zip(setup.model.state_dict().values(), again.model.state_dict().values()))
    with torch.no_grad():
        assert setup.model.eval()(setup.example).shape == (2, setup.data.num_classes)


def test_prepare_refuses_an_optimizer_that_cannot_serve_the_mode():
    with pytest.raises(UsageError, match="--optimizer dhspg prunes channels only"):
        prepare(SearchConfig(model="search_spaces:resnet20", data="synthetic", mode="erase", optimizer="dhspg",
                             device="cpu"))
