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

__all__ = ["measure_latency", "threads", "time_call"]


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
                    num_threads: int | None = None) -> list[float]:
    """The median seconds of one forward pass of each of ``nets`` on ``inputs`` (positional
    arguments, on the nets' device), the nets timed in turn inside each of ``repeats``
    repetitions after ``warmup`` untimed passes each. The nets are put in eval mode."""
    if not nets:
        return []
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
