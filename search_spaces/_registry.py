"""The registry behind ``search_spaces.create``/``list``/``info``.

An entry is a factory function ``fn(size="default", **kwargs) -> nn.Module``
registered with :func:`register`, which also records what the entry takes
and returns (:class:`EntryInfo`). Registering a name twice replaces the old
entry and warns.
"""

from __future__ import annotations

import builtins
import difflib
import warnings
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
from torch import nn

__all__ = ["EntryInfo", "SIZES", "check_size", "create", "info", "list_entries", "register"]

SIZES: tuple[str, ...] = ("tiny", "default")
"""The sizes every entry accepts through its ``size=`` keyword."""

F = TypeVar("F", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class EntryInfo:
    """What one registered entry is, takes and returns.

    Attributes:
        name: the registered name.
        kind: ``"supernet"`` (candidate operators summed, for operator erasure)
            or ``"network"`` (a plain network, for channel pruning).
        input_shape: one sample's input shape, without the batch dimension,
            at the default size and default keyword arguments.
        tiny_input_shape: the input shape used to test the ``size="tiny"``
            variant (the tiny variants often take smaller images).
        input_dtype: dtype of the input tensor (``torch.float32`` for images,
            ``torch.int64`` for token ids).
        output: the output, in words, e.g. ``"logits (num_classes,)"``.
        source: where the design comes from (paper, year, arXiv id).
        default_params: parameter count of ``create(name)`` (default kwargs).
        tiny_params: parameter count of ``create(name, size="tiny")``.
        paper_params: the parameter count the source reports for the same
            configuration, or ``None`` when it reports none.
    """

    name: str
    kind: str
    input_shape: tuple[int, ...]
    tiny_input_shape: tuple[int, ...]
    input_dtype: torch.dtype
    output: str
    source: str
    default_params: int
    tiny_params: int
    paper_params: int | None = None


_ENTRIES: dict[str, tuple[Callable[..., nn.Module], EntryInfo]] = {}


def register(
    name: str,
    *,
    kind: str,
    input_shape: tuple[int, ...],
    output: str,
    source: str,
    default_params: int,
    tiny_params: int,
    tiny_input_shape: tuple[int, ...] | None = None,
    input_dtype: torch.dtype = torch.float32,
    paper_params: int | None = None,
) -> Callable[[F], F]:
    """Decorator registering a factory ``fn(size="default", **kwargs)`` as ``name``.

    The parameter counts are measured figures (``tests/search_spaces`` checks
    them against the built models). Registering an existing name replaces it
    and emits a ``UserWarning``.
    """
    if kind not in ("supernet", "network"):
        raise ValueError(f"kind must be 'supernet' or 'network', got {kind!r}")
    entry = EntryInfo(
        name=name,
        kind=kind,
        input_shape=tuple(input_shape),
        tiny_input_shape=tuple(tiny_input_shape if tiny_input_shape is not None else input_shape),
        input_dtype=input_dtype,
        output=output,
        source=source,
        default_params=default_params,
        tiny_params=tiny_params,
        paper_params=paper_params,
    )

    def decorator(fn: F) -> F:
        if name in _ENTRIES:
            warnings.warn(
                f"search_spaces: entry {name!r} is registered again; the new "
                f"factory {fn.__module__}.{fn.__qualname__} replaces the old one",
                UserWarning,
                stacklevel=2,
            )
        _ENTRIES[name] = (fn, entry)
        return fn

    return decorator


def _lookup(name: str) -> tuple[Callable[..., nn.Module], EntryInfo]:
    try:
        return _ENTRIES[name]
    except KeyError:
        close = difflib.get_close_matches(name, builtins.list(_ENTRIES), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(
            f"no search space named {name!r}.{hint} Known: {', '.join(sorted(_ENTRIES))}"
        ) from None


def create(name: str, **kwargs) -> nn.Module:
    """Build the registered entry ``name``; ``kwargs`` go to its factory.

    Every factory takes ``size="default"|"tiny"``; most take ``num_classes``
    and ``in_chans``; see each model file for the rest.
    """
    fn, _ = _lookup(name)
    return fn(**kwargs)


def info(name: str) -> EntryInfo:
    """The :class:`EntryInfo` of the registered entry ``name``."""
    return _lookup(name)[1]


def list_entries() -> builtins.list[str]:
    """Sorted names of all registered entries (exported as ``search_spaces.list``)."""
    return sorted(_ENTRIES)


def check_size(size: str) -> str:
    """Validate the ``size=`` keyword shared by all factories."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    return size
