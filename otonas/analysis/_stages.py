"""Stages: where prunable groups live, for per-stage budgets (``otonas tune``, DHSPG)."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["group_stages", "stage_of"]


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def stage_of(model: nn.Module, param_name: str) -> str:
    """The stage of a parameter: the innermost container (``nn.Sequential``, ``nn.ModuleList``,
    ``nn.ModuleDict``) on its module path whose child is not itself a container — the list of
    blocks it sits in (``layer2`` of torchvision's ``layer2.0.conv1.weight``, ``stages.0`` of
    ``stages.0.1.conv1.weight``); a parameter with no container above it has its top-level
    module as stage (``conv1`` of ``conv1.weight``)."""
    parts = param_name.split(".")[:-1]
    if not parts:
        return param_name
    module: nn.Module = model
    stage: str | None = None
    for i, part in enumerate(parts):
        child = module._modules.get(part) if hasattr(module, "_modules") else None
        if child is None:
            break
        if isinstance(module, _CONTAINERS) and not isinstance(child, _CONTAINERS):
            stage = ".".join(parts[:i])
            break
        module = child
    return stage or parts[0]


def group_stages(space: Any) -> dict[str, list[int]]:
    """Stage name -> the prunable groups it holds, stages in the order they first appear.

    A group belongs to the stage of the first parameter (in the model's parameter order) that
    produces it — has its channels along dim 0 — or, when none does, the first that holds it."""
    order = {name: i for i, (name, _) in enumerate(space.model.named_parameters())}
    first: dict[int, tuple[int, int, str]] = {}  # group -> (not a producer, position, name)
    for name, entries in space.group_layout().items():
        pos = order.get(name, len(order))
        for dim, ids in entries:
            key = (0 if dim == 0 else 1, pos)
            for gid in {int(g) for g in ids.tolist() if g >= 0}:
                if gid not in first or key < first[gid][:2]:
                    first[gid] = (*key, name)
    stages: dict[str, list[int]] = {}
    for gid, (_, _, name) in sorted(first.items(), key=lambda kv: (order.get(kv[1][2], 0), kv[0])):
        stages.setdefault(stage_of(space.model, name), []).append(gid)
    for members in stages.values():
        members.sort()
    return stages
