"""A per-layer latency table, measured once per machine setting and cached on disk.

A layer's time depends on its kind and fixed settings (kernel, stride, spatial size, rows)
and on how many input and output channels it keeps. Each distinct layer is timed alone at a
few kept widths per channel axis — 1/4, 1/2, 3/4 and all of its channels, fewer where an axis
cannot shrink — and any width in between is read off by bilinear interpolation; below the
narrowest point the time falls linearly towards zero. The measured grid is made monotone
(a running maximum along both axes) before it is used, so an estimate never drops when a
layer keeps more channels: noise, and kernels that are faster at some odd width, are smoothed
away. That is the approximate part: the table knows the time at the grid points, not the
speed-up or slow-down of a particular channel count between them (``round_to`` keeps counts
on the multiples that kernels like).

The cache is one JSON file per (device, dtype, memory format, batch, CPU threads, torch version) under
:func:`default_cache_dir` — ``$OTONAS_CACHE_DIR``, else ``$XDG_CACHE_HOME/otonas``, else
``~/.cache/otonas`` — in its ``latency/`` folder. A second table for the same setting finds
every layer it needs there and measures nothing. Delete the file to measure again (after a
change of hardware settings the cache cannot see, e.g. a CPU governor).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import OtonasError
from ._measure import MEMORY_FORMATS, memory_format_name, threads, time_call

__all__ = ["LayerShape", "LayerTimes", "LatencyTable", "default_cache_dir", "GRID"]

GRID = (0.25, 0.5, 0.75, 1.0)  # kept widths measured per channel axis, as fractions of the layer's own
KINDS = ("conv2d", "dwconv2d", "linear")


def default_cache_dir() -> str:
    """Where latency tables are cached: ``$OTONAS_CACHE_DIR``, ``$XDG_CACHE_HOME/otonas`` or
    ``~/.cache/otonas``, then ``latency/``."""
    root = os.environ.get("OTONAS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "otonas")
    return os.path.join(root, "latency")


@dataclass(frozen=True)
class LayerShape:
    """One layer as the table measures it. ``kind``: ``conv2d`` (``groups`` 1), ``dwconv2d``
    (depthwise: one channel axis, ``in_channels`` = ``out_channels``) or ``linear``; ``rows``:
    the batch (conv) or the rows of the matrix product (linear, batch × tokens); ``spatial``:
    the input's height and width (conv). ``min_in``/``min_out``: the fewest channels each axis
    can keep (the full count where the axis is not prunable)."""

    kind: str
    rows: int
    in_channels: int
    out_channels: int
    min_in: int
    min_out: int
    spatial: tuple[int, int] = (1, 1)
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    bias: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise OtonasError(f"LayerShape: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if min(self.rows, self.in_channels, self.out_channels) < 1:
            raise OtonasError(f"LayerShape: {self} has an empty dimension")

    def points(self) -> tuple[list[int], list[int]]:
        """The kept widths measured on the input and output channel axes."""
        def axis(full: int, least: int) -> list[int]:
            pts = {full} | {int(round(full * f)) for f in GRID}
            return sorted(p for p in pts if max(1, least) <= p <= full) or [full]
        ins = axis(self.in_channels, self.min_in)
        outs = ins if self.kind == "dwconv2d" else axis(self.out_channels, self.min_out)
        return ins, outs

    def key(self) -> str:
        ins, outs = self.points()
        fixed = (f"{self.kind} r{self.rows} hw{self.spatial[0]}x{self.spatial[1]} k{self.kernel[0]}x{self.kernel[1]} "
                 f"s{self.stride[0]},{self.stride[1]} p{self.padding[0]},{self.padding[1]} "
                 f"d{self.dilation[0]},{self.dilation[1]} b{int(self.bias)}")
        return f"{fixed} in{','.join(map(str, ins))} out{','.join(map(str, outs))}"

    def run(self, cin: int, cout: int, device: torch.device, dtype: torch.dtype,
            memory_format: str = "contiguous") -> Any:
        """A closure that runs this layer once at ``cin`` -> ``cout`` kept channels (a
        convolution's input and weight in ``memory_format``)."""
        g = torch.Generator(device="cpu").manual_seed(0)

        def rnd(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

        if self.kind == "linear":
            x, w = rnd(self.rows, cin), rnd(cout, cin)
            b = rnd(cout) if self.bias else None
            return lambda: F.linear(x, w, b)
        depthwise = self.kind == "dwconv2d"
        c_out = cin if depthwise else cout
        fmt = MEMORY_FORMATS[memory_format]
        x = rnd(self.rows, cin, *self.spatial).contiguous(memory_format=fmt)
        w = rnd(c_out, 1 if depthwise else cin, *self.kernel).contiguous(memory_format=fmt)
        b = rnd(c_out) if self.bias else None
        groups = cin if depthwise else 1
        return lambda: F.conv2d(x, w, b, self.stride, self.padding, self.dilation, groups)


class LayerTimes:
    """The measured (monotone) grid of one layer and the interpolation between its points."""

    def __init__(self, ins: list[int], outs: list[int], seconds: list[list[float]], depthwise: bool = False) -> None:
        self.ins = [0, *ins]
        self.outs = [0, *outs]
        t = np.asarray(seconds, dtype=np.float64).reshape(len(ins), len(outs))
        t = np.maximum.accumulate(np.maximum.accumulate(t, axis=0), axis=1)
        grid = np.zeros((len(ins) + 1, len(outs) + 1))
        grid[1:, 1:] = t
        self.grid = grid
        self.depthwise = depthwise

    def __call__(self, cin: float, cout: float) -> float:
        if self.depthwise:
            cout = cin  # one axis: the grid's diagonal
            i = self._segment(self.ins, cin)
            a, lo, hi = i
            return float(self.grid[lo, lo] * (1 - a) + self.grid[hi, hi] * a)
        ai, i0, i1 = self._segment(self.ins, cin)
        ao, o0, o1 = self._segment(self.outs, cout)
        g = self.grid
        return float((1 - ai) * ((1 - ao) * g[i0, o0] + ao * g[i0, o1]) + ai * ((1 - ao) * g[i1, o0] + ao * g[i1, o1]))

    @staticmethod
    def _segment(points: list[int], v: float) -> tuple[float, int, int]:
        v = min(max(float(v), 0.0), float(points[-1]))
        hi = int(np.searchsorted(points, v, side="left"))
        if hi == 0:
            return 0.0, 0, 0
        lo = hi - 1
        return (v - points[lo]) / (points[hi] - points[lo]), lo, hi


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


class LatencyTable:
    """Measured per-layer latencies for one device, dtype, batch, CPU thread count and memory
    format (``"contiguous"`` or ``"channels_last"``: convolutions' inputs and weights).

    ``times(shape)`` gives the :class:`LayerTimes` of a :class:`LayerShape`, measuring it the
    first time any table of this setting needs it and writing it to the cache file ``path``
    (``cache_dir``, default :func:`default_cache_dir`; ``cache_dir=False``: memory only).
    ``measured`` counts the layer shapes this object timed itself (0 when the cache held them
    all), ``measured_models`` the whole networks. Each grid point is the fastest of ``repeats``
    runs (more for very short layers) after two untimed ones.
    """

    def __init__(self, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, batch: int = 1,
                 num_threads: int | None = None, cache_dir: str | bool | None = None, repeats: int = 5,
                 memory_format: str | torch.memory_format | None = None) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise OtonasError(f"LatencyTable: batch={batch!r} is invalid; expected an int >= 1")
        if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                        or num_threads < 1):
            raise OtonasError(f"LatencyTable: num_threads={num_threads!r} is invalid; expected an int >= 1 or None "
                              "(torch's current setting)")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise OtonasError("LatencyTable: device cuda was asked for but torch sees no CUDA device; use cpu")
        self.dtype = dtype
        self.memory_format = memory_format_name(memory_format)
        self.batch = int(batch)
        self.num_threads = int(num_threads) if num_threads is not None else torch.get_num_threads()
        self.repeats = max(1, int(repeats))
        self.setting = {"device": str(self.device), "device_name": _device_name(self.device),
                        "dtype": str(dtype).replace("torch.", ""), "batch": self.batch, "threads": self.num_threads,
                        "torch": torch.__version__}
        fmt = ""
        if self.memory_format != "contiguous":  # (contiguous tables keep the settings and names they had)
            self.setting["memory_format"] = self.memory_format
            fmt = "-cl"
        digest = hashlib.sha1(json.dumps(self.setting, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{self.device.type}-{self.setting['dtype']}{fmt}-b{self.batch}-t{self.num_threads}-{digest}.json"
        self.path: str | None = None if cache_dir is False else os.path.join(
            default_cache_dir() if cache_dir in (None, True) else str(cache_dir), name)
        self.measured = 0
        self.measured_models = 0
        self._layers: dict[str, Any] = {}
        self._dense: dict[str, Any] = {}
        self._load()

    # --- the cache file ---------------------------------------------------------------------
    def _read(self) -> dict[str, Any]:
        if self.path is None or not os.path.exists(self.path):
            return {}
        try:
            with open(self.path) as f:
                raw = json.load(f)
            return raw if isinstance(raw, dict) and raw.get("setting") == self.setting else {}
        except (OSError, ValueError):
            return {}  # a damaged cache is measured again, never trusted

    def _load(self) -> None:
        raw = self._read()
        self._layers.update(raw.get("layers", {}))
        self._dense.update(raw.get("models", {}))

    def _save(self) -> None:
        if self.path is None:
            return
        raw = self._read()  # another process may have added entries since we read
        layers = {**raw.get("layers", {}), **self._layers}
        models = {**raw.get("models", {}), **self._dense}
        folder = os.path.dirname(self.path)
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".latency-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump({"setting": self.setting, "layers": layers, "models": models}, f, indent=0)
            os.replace(tmp, self.path)
        except OSError as e:
            raise OtonasError(f"cannot write the latency table {self.path}: {e}; set OTONAS_CACHE_DIR to a "
                              "writable folder") from e

    # --- measuring --------------------------------------------------------------------------
    def _time(self, fn: Any) -> float:
        """The fastest of a few runs after two untimed ones. On a shared machine a run is often
        descheduled for a whole time slice (measured: a 3×3 convolution took 1.6 ms or 10 ms at
        random under a load of 4 on 2 cores), so a median flips between the two; the fastest run
        is the layer's own cost. The dense network is calibrated the same way."""
        time_call(fn, self.device)
        first = time_call(fn, self.device)
        # short layers: more runs (to 20 ms); long ones (over 20 ms a run) settle with three
        n = min(25, max(3 if first > 0.02 else self.repeats, int(math.ceil(0.02 / max(first, 1e-6)))))
        return float(min([first] + [time_call(fn, self.device) for _ in range(n)]))

    @torch.inference_mode()
    def times(self, shape: LayerShape) -> LayerTimes:
        """The layer's measured grid, from the cache or timed now."""
        key = shape.key()
        ins, outs = shape.points()
        if key not in self._layers:
            with threads(self.num_threads):
                if shape.kind == "dwconv2d":
                    diag = [self._time(shape.run(c, c, self.device, self.dtype, self.memory_format)) for c in ins]
                    seconds = [[diag[min(i, j)] for j in range(len(outs))] for i in range(len(ins))]
                else:
                    seconds = [[self._time(shape.run(ci, co, self.device, self.dtype, self.memory_format)) for co in outs] for ci in ins]
            self._layers[key] = seconds
            self.measured += 1
            self._save()
        return LayerTimes(ins, outs, self._layers[key], depthwise=shape.kind == "dwconv2d")

    def network(self, key: str, measure: Any) -> dict[str, Any]:
        """The cached measurements of a whole network (``key`` names its graph and batch), else
        ``measure()`` (a JSON-able dict), stored."""
        if key not in self._dense:
            with threads(self.num_threads):
                self._dense[key] = measure()
            self.measured_models += 1
            self._save()
        return dict(self._dense[key])
