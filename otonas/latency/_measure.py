"""Wall-clock latency of whole networks: several nets timed in turn, medians.

Machines are noisy (other processes, frequency scaling, a neighbour's benchmark). Timing the
full model first and its subnet afterwards lets a change of load land on one of them only;
timing them in turn inside every repetition spreads it over both, and the median drops the
outliers.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["measure_latency", "threads", "time_call", "MEMORY_FORMATS", "memory_format_name", "to_memory_format"]

# The memory formats latencies are measured in: "contiguous" (NCHW, PyTorch's default) or
# "channels_last" (NHWC: oneDNN's and cuDNN's preferred layout for convolutions; the network's
# 4-d weights and inputs are converted, as ``model.to(memory_format=torch.channels_last)`` does).
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def memory_format_name(name: str | torch.memory_format | None) -> str:
    """The name in :data:`MEMORY_FORMATS` of ``name`` (a name or a ``torch.memory_format``; None:
    "contiguous"), or an ``OtonasError`` naming the choices."""
    from ..errors import OtonasError

    if name is None:
        return "contiguous"
    if isinstance(name, torch.memory_format):
        for k, v in MEMORY_FORMATS.items():
            if v == name:
                return k
    elif name in MEMORY_FORMATS:
        return str(name)
    raise OtonasError(f"memory format {name!r} is not one of {', '.join(MEMORY_FORMATS)} "
                      "(torch.contiguous_format or torch.channels_last)")


def to_memory_format(x: Any, name: str) -> Any:
    """``x`` (a tensor, or a list/tuple of them) with its 4-d tensors in memory format ``name``;
    other values as they are."""
    if name == "contiguous":
        return x
    if isinstance(x, (list, tuple)):
        return type(x)(to_memory_format(v, name) for v in x)
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=MEMORY_FORMATS[name])
    return x


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[int]:
    """Run the block with ``n`` intra-op CPU threads (torch's setting when None); yields the count."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(int(n))
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes (the device synchronised before and after)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


@torch.inference_mode()
def measure_latency(nets: Sequence[nn.Module], inputs: Sequence[Any], *, repeats: int = 10, warmup: int = 2,
                    num_threads: int | None = None,
                    memory_format: str | torch.memory_format | None = None) -> list[float]:
    """The median seconds of one forward pass of each of ``nets`` on ``inputs`` (positional
    arguments, on the nets' device), the nets timed in turn inside each of ``repeats``
    repetitions after ``warmup`` untimed passes each. The nets are put in eval mode.

    ``memory_format="channels_last"`` times copies of the nets with their 4-d weights, and the
    4-d inputs, in channels-last layout (the nets given are left as they are); every net is
    timed in the same format, so ratios between them stay like for like."""
    if not nets:
        return []
    fmt = memory_format_name(memory_format)
    if fmt != "contiguous":
        import copy

        nets = [copy.deepcopy(n).to(memory_format=MEMORY_FORMATS[fmt]) for n in nets]  # type: ignore[call-overload]
        inputs = to_memory_format(tuple(inputs), fmt)
    devices = [next((p.device for p in n.parameters()), torch.device("cpu")) for n in nets]
    times: list[list[float]] = [[] for _ in nets]
    with threads(num_threads):
        for n in nets:
            n.eval()
        for _ in range(max(0, warmup)):
            for n in nets:
                n(*inputs)
        for r in range(max(1, repeats)):
            order = range(len(nets)) if r % 2 == 0 else reversed(range(len(nets)))  # neither always first
            for i in order:
                times[i].append(time_call(lambda: nets[i](*inputs), devices[i]))
    return [float(statistics.median(t)) for t in times]
