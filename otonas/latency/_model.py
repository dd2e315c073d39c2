"""The latency of a search space's network for any set of removed channels, estimated.

The estimate is the sum of the network's convolutions and linear layers, each read off a
:class:`LatencyTable` at the channels it keeps and scaled by how much slower that layer ran
inside the dense network than alone (measured once, with forward hooks, over all layers
together: alone a layer's weights stay in cache), plus the rest of the network (normalisations, activations, additions,
pooling, attention products, Python overhead): the dense network's measured end-to-end time
minus its layers' in-network time, shrunk in proportion to the elements those other ops
still produce. So the estimate of the dense network is its measured time by
construction, and what a budget means — a fraction of the dense latency — is a fraction of a
measured number.

What is approximate: the layers' in-network slow-down is one factor, measured at full width
and assumed for every layer at every width; the rest is assumed to cost in proportion to its activations, which
holds for memory-bound element-wise ops and less for a matrix product the table does not
cover (grouped convolutions other than depthwise, ``matmul``, attention: they are in the rest);
and the grid interpolation (see :mod:`otonas.latency._table`). The measured latency of the
built subnet is the ground truth; ``otonas search`` reports both.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from ..errors import OtonasError
from ..ops import module_path
from ._measure import MEMORY_FORMATS, time_call, to_memory_format
from ._table import LatencyTable, LayerShape, LayerTimes

__all__ = ["LatencyModel", "batched_inputs"]


def _pair(v: Any, default: int) -> tuple[int, int]:
    if v is None:
        return default, default
    if isinstance(v, int):
        return v, v
    v = list(v)
    return (int(v[0]), int(v[0])) if len(v) == 1 else (int(v[0]), int(v[1]))


def _shape(node: Any) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(int(s) for s in val.shape) if isinstance(val, torch.Tensor) else None


def batched_inputs(example: Sequence[Any], batch: int, device: torch.device, dtype: torch.dtype) -> list[Any]:
    """``example`` (the inputs a space was captured with) at batch ``batch``: rows repeated in
    turn, floating tensors cast to ``dtype``, all moved to ``device``."""
    out: list[Any] = []
    for x in example:
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            x = x.detach()[torch.arange(batch) % x.shape[0]].to(device)
            out.append(x.to(dtype) if x.is_floating_point() else x)
        else:
            out.append(x)
    return out


class LatencyModel:
    """Estimated latency (seconds) of ``space``'s network at ``batch`` on ``device`` for any
    ``removed`` mask over its prunable groups: :meth:`seconds`, :meth:`fraction` of the dense.

    Building one measures the layer shapes the table lacks and the dense network end to end
    (both cached: a second model of the same network and setting measures nothing). Pass a
    ``table`` to share one, or the table's settings (``device``, ``dtype``, ``num_threads``,
    ``cache_dir``, ``memory_format``) to make it.
    """

    def __init__(self, space: Any, *, batch: int = 1, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, num_threads: int | None = None,
                 cache_dir: str | bool | None = None, table: LatencyTable | None = None, repeats: int = 10,
                 memory_format: str | torch.memory_format | None = None) -> None:
        if not hasattr(space, "kept_shapes"):
            raise OtonasError("LatencyModel needs the SearchSpace from otonas.analyze (space.kept_shapes)")
        self.space = space
        self.table = table or LatencyTable(device=device, dtype=dtype, batch=batch, num_threads=num_threads,
                                           cache_dir=cache_dir, memory_format=memory_format)
        graph = space.capture.graph
        batch = self.table.batch
        cap_batch = next((int(x.shape[0]) for x in space.capture.example_inputs
                          if isinstance(x, torch.Tensor) and x.dim() > 0), 1)
        names = [n.name for n in graph.nodes if n.op in ("call_function", "placeholder")]
        full = space.kept_shapes(nodes=names)
        least = space.kept_shapes(np.ones(space.num_prunable_groups, dtype=bool), nodes=names)
        self._layers: list[tuple[str, str, LayerTimes, int, int]] = []  # node, input, times, in/out axes
        self._rest: list[str] = []
        layer_nodes: set[str] = set()
        for node in graph.nodes:
            if node.op != "call_function" or node.name not in full:
                continue
            found = self._layer(node, full, least, batch, cap_batch)
            if found is not None:
                shape, in_axis, out_axis = found
                self._layers.append((node.name, node.args[0].name, self.table.times(shape), in_axis, out_axis))
                layer_nodes.add(node.name)
            else:
                self._rest.append(node.name)
        self._nodes = sorted({n for n, i, *_ in self._layers} | {i for n, i, *_ in self._layers} | set(self._rest))
        self._rest_dense = float(self._rest_elements(full))
        alone = [t(full[i][ia], full[n][oa]) for n, i, t, ia, oa in self._layers]
        net = self.table.network(self._signature(graph, batch), lambda: self._measure_dense([n for n, *_ in self._layers]))
        self.dense_seconds = float(net["seconds"])
        # A layer timed alone runs warm (its weights stay in cache between runs); inside the
        # network they come from memory. The layers' grids are scaled by their summed time inside
        # the dense network over their summed time alone: one factor, since a per-layer ratio of
        # two noisy medians is noisier than the effect it would correct.
        pairs = [(float(v), a) for v, a in zip(net["layers"], alone) if v is not None and a > 0]
        factor = sum(v for v, _ in pairs) / sum(a for _, a in pairs) if pairs else 1.0
        self._factor = [factor] * len(alone)
        self.in_network_factor = factor
        self.layer_seconds = float(sum(f * a for f, a in zip(self._factor, alone)))
        # what the layers do not explain is the rest (normalisations, activations, overhead)
        self.rest_seconds = max(0.0, self.dense_seconds - self.layer_seconds)
        self._scale = min(1.0, self.dense_seconds / self.layer_seconds) if self.layer_seconds > 0 else 1.0
        self.alone_seconds = float(sum(alone))

    # --- the layers the table covers ---------------------------------------------------------
    @staticmethod
    def _layer(node: Any, full: dict[str, list[int]], least: dict[str, list[int]], batch: int,
               cap_batch: int) -> tuple[LayerShape, int, int] | None:
        target = str(node.target)
        args = list(node.args)
        x = args[0] if args else None
        if not isinstance(x, fx.Node) or len(args) < 2 or not isinstance(args[1], fx.Node):
            return None
        xs, ws = _shape(x), _shape(args[1])
        if xs is None or ws is None or x.name not in full:
            return None
        bias = len(args) > 2 and args[2] is not None
        if target == "aten.linear.default" and len(xs) >= 1 and len(ws) == 2:
            rows = math.prod(xs[:-1]) if len(xs) > 1 else 1
            if len(xs) > 1 and xs[0] == cap_batch:
                rows = rows // cap_batch * batch
            ci, co = full[x.name][-1], full[node.name][-1]
            return LayerShape("linear", max(rows, 1), ci, co, least[x.name][-1], least[node.name][-1],
                              bias=bias), -1, -1
        if target == "aten.conv2d.default" and len(xs) == 4 and len(ws) == 4:
            pad = args[4] if len(args) > 4 else 0
            if isinstance(pad, str):
                return None  # padding="same": left to the rest
            groups = int(args[6]) if len(args) > 6 else 1
            ci, co = full[x.name][1], full[node.name][1]
            depthwise = groups > 1 and groups == xs[1] == ws[0] and ws[1] == 1
            if groups != 1 and not depthwise:
                return None
            return LayerShape("dwconv2d" if depthwise else "conv2d", batch, ci, co, least[x.name][1],
                              least[node.name][1], spatial=(xs[2], xs[3]), kernel=(ws[2], ws[3]),
                              stride=_pair(args[3] if len(args) > 3 else None, 1), padding=_pair(pad, 0),
                              dilation=_pair(args[5] if len(args) > 5 else None, 1), bias=bias), 1, 1
        return None

    def _rest_elements(self, shapes: dict[str, list[int]]) -> int:
        return sum(math.prod(shapes[n]) for n in self._rest if n in shapes)

    # --- the dense network, measured ---------------------------------------------------------
    def _signature(self, graph: Any, batch: int) -> str:
        lines = [f"{n.op} {n.target} {_shape(n)}" for n in graph.nodes]
        return "model " + hashlib.sha1("\n".join(lines).encode()).hexdigest()[:16] + f" b{batch}"

    def _measure_dense(self, layer_nodes: list[str]) -> dict[str, Any]:
        """The dense network's fastest end-to-end time, and each table layer's fastest time inside it
        (forward hooks on its ``nn.Conv2d``/``nn.Linear`` module; None for a layer without one)."""
        model = self.space.model
        if any(p.is_meta for p in model.parameters()):
            raise OtonasError("LatencyModel: the model is on the meta device; its latency needs real weights "
                              "(analyse a model with weights, or give target_flops instead)")
        fmt = self.table.memory_format
        net = copy.deepcopy(model).to(device=self.table.device, dtype=self.table.dtype).eval()
        net = net.to(memory_format=MEMORY_FORMATS[fmt])
        inputs = to_memory_format(batched_inputs(self.space.capture.example_inputs, self.table.batch,
                                                 self.table.device, self.table.dtype), fmt)
        repeats = max(3, self.table.repeats)
        nodes = {n.name: n for n in self.space.capture.graph.nodes}
        calls: dict[str, list[float]] = {}
        where: list[tuple[str, int] | None] = []
        seen: dict[str, int] = {}
        modules = dict(net.named_modules())
        for name in layer_nodes:
            path = str(module_path(nodes[name]))
            if path and path in modules and isinstance(modules[path], (nn.Conv2d, nn.Linear)):
                where.append((path, seen.get(path, 0)))
                seen[path] = seen.get(path, 0) + 1
            else:
                where.append(None)
        sync = self.table.device.type == "cuda"
        start: dict[str, float] = {}

        def pre(path: str) -> Any:
            def hook(mod: Any, args: Any) -> None:
                if sync:
                    torch.cuda.synchronize(self.table.device)
                start[path] = time.perf_counter()
            return hook

        def post(path: str) -> Any:
            def hook(mod: Any, args: Any, out: Any) -> None:
                if sync:
                    torch.cuda.synchronize(self.table.device)
                calls.setdefault(path, []).append(time.perf_counter() - start[path])
            return hook

        handles = [h for path in seen for h in (modules[path].register_forward_pre_hook(pre(path)),
                                                 modules[path].register_forward_hook(post(path)))]
        per_run: list[dict[str, list[float]]] = []
        totals: list[float] = []  # the hooks cost two clock reads a layer: the end-to-end time stands
        try:
            with torch.inference_mode():
                net(*inputs)  # warm-up
                net(*inputs)
                for _ in range(repeats):
                    calls.clear()
                    totals.append(time_call(lambda: net(*inputs), self.table.device))
                    per_run.append({k: list(v) for k, v in calls.items()})
        finally:
            for h in handles:
                h.remove()
        layers: list[float | None] = []
        for w in where:
            if w is None:
                layers.append(None)
                continue
            path, k = w
            runs = [r[path][k] for r in per_run if len(r.get(path, ())) > k]
            layers.append(float(min(runs)) if runs else None)
        # the fastest runs, as the table's points are (see LatencyTable._time)
        return {"seconds": float(min(totals)), "layers": layers}

    # --- estimates ---------------------------------------------------------------------------
    def seconds(self, removed: np.ndarray | None = None, erased: np.ndarray | None = None) -> float:
        """Estimated seconds of one forward pass with ``removed`` groups (and ``erased``
        erasing groups) taken out; the dense network's measured time when none are."""
        shapes = self.space.kept_shapes(removed, erased, nodes=self._nodes)
        for n, i, *_ in self._layers:  # an erased layer costs nothing
            if n not in shapes:
                shapes[n] = [0] * 4
            shapes.setdefault(i, [0] * 4)
        layers = sum(f * t(shapes[i][ia], shapes[n][oa]) for f, (n, i, t, ia, oa) in zip(self._factor, self._layers))
        rest = self._rest_elements(shapes) / self._rest_dense if self._rest_dense > 0 else 1.0
        return float(self._scale * layers + self.rest_seconds * rest)

    def fraction(self, removed: np.ndarray | None = None, erased: np.ndarray | None = None) -> float:
        """:meth:`seconds` as a fraction of the dense network's."""
        return self.seconds(removed, erased) / self.dense_seconds

    def info(self) -> dict[str, Any]:
        """The setting and the calibration, for a report."""
        return {"batch": self.table.batch, "device": str(self.table.device), "dtype": self.table.setting["dtype"],
                "memory_format": self.table.memory_format, "threads": self.table.num_threads, "table": self.table.path, "layers": len(self._layers),
                "dense_seconds": self.dense_seconds, "layer_seconds": self.layer_seconds,
                "rest_seconds": self.rest_seconds, "alone_seconds": self.alone_seconds,
                "in_network_factor": self.in_network_factor, "measured_shapes": self.table.measured}
