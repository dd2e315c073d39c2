"""Registries of per-ATen-op behaviour: channel-flow rules, build rewrites, FLOP counts.

Supporting a new op is adding one function here or in a rules module with the
decorator of the right registry. Keys are ATen overload names such as
``"aten.conv2d.default"``; a key without overload (``"aten.conv2d"``) matches every
overload of that op.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Generic, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["Registry", "op_key", "FLOW_RULES", "BUILD_RULES", "FLOP_RULES"]


def op_key(target: Any) -> tuple[str, str]:
    """(overload name, packet name) of an fx node target, e.g. ('aten.add.Tensor', 'aten.add')."""
    name = str(target)
    if name.startswith("aten.") and name.count(".") >= 2:
        return name, name.rsplit(".", 1)[0]
    return name, name


class Registry(Generic[F]):
    def __init__(self, what: str) -> None:
        self.what = what
        self._rules: dict[str, F] = {}

    def register(self, *names: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            for name in names:
                if name in self._rules:
                    warnings.warn(f"otonas: {self.what} for {name} overwritten by {fn.__qualname__}", stacklevel=2)
                self._rules[name] = fn
            return fn

        return deco

    def lookup(self, target: Any) -> F | None:
        full, packet = op_key(target)
        return self._rules.get(full) or self._rules.get(packet)

    def __contains__(self, name: str) -> bool:
        return name in self._rules


FLOW_RULES: Registry[Callable[..., Any]] = Registry("channel-flow rule")
BUILD_RULES: Registry[Callable[..., Any]] = Registry("build rewrite")
FLOP_RULES: Registry[Callable[..., Any]] = Registry("FLOP count")
