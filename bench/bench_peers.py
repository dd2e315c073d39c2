"""otonas beside Torch-Pruning (``pip install -r bench/requirements.txt``) on the torchvision
classification zoo: coverage and speed of analysis. One fresh process per model and tool.

    python bench/bench_peers.py coverage [--quick] [--zoo bench/zoo.json] [--out peers.json] [--workers 2]
    python bench/bench_peers.py coverage --tp-json peers.json --skip-missing   # re-render the table
    python bench/bench_peers.py speed [--models resnet18,resnet50,...] [--repeat 3]

coverage: for each model, otonas' ``verify`` (analyze, zero 30% of the prunable groups, build,
compare outputs) — read from a ``bench/bench_zoo.py`` JSON file where it holds the model, else
run here — and Torch-Pruning's ``DependencyGraph.build_dependency`` (as ``MagnitudePruner`` calls it) and
a 30% pruning step (L2 magnitude, every layer whose output is the class logits ignored; ``num_heads`` given for
``nn.MultiheadAttention``) followed by a forward pass that must keep the output shape.

speed: otonas.analyze (capture included) against build_dependency on the same model and input
(batch 2, the model's default resolution), each warmed up once, then alternated; medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOO_LARGE = {"vit_h_14", "regnet_y_128gf"}  # skipped by bench_zoo.py as well (memory at verify's batch)
QUICK = ["alexnet", "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "densenet121",
         "googlenet", "squeezenet1_0", "shufflenet_v2_x1_0", "convnext_tiny", "vit_b_16"]
SPEED = ["resnet18", "resnet50", "mobilenet_v2", "vit_b_16", "convnext_tiny", "densenet121"]


def _load(name: str, batch: int):  # type: ignore[no-untyped-def]
    import torch

    sys.path.insert(0, str(ROOT))
    from otonas.models import resolve_model

    torch.manual_seed(0)
    resolved = resolve_model(f"torchvision:{name}")
    shape = resolved.input_shapes[0]
    return resolved.model.eval(), torch.randn(batch, *shape[1:])


def _classifier_layers(model, num_classes: int = 1000) -> list:  # type: ignore[no-untyped-def]
    from torch import nn

    return [m for m in model.modules() if (isinstance(m, nn.Linear) and m.out_features == num_classes)
            or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes)]


def tp_case(name: str, ratio: float = 0.3) -> dict:
    """Torch-Pruning on one model: dependency graph, then a magnitude-pruning step and a forward pass."""
    import torch
    import torch_pruning as tp
    from torch import nn

    r: dict = {"model": name, "tp_graph": False, "tp_prune": False, "tp_forward": False}
    model, x = _load(name, 1)
    params_before = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        out_shape = tuple(model(x).shape)
    ignored = _classifier_layers(model)
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    try:
        t = time.perf_counter()  # the pruner builds its DependencyGraph (build_dependency) here
        pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                           pruning_ratio=ratio, ignored_layers=ignored, num_heads=heads)
        r["tp_graph_seconds"] = round(time.perf_counter() - t, 2)
        r["tp_graph"] = True
        touched: set[int] = set()
        covered = 0
        for group in pruner.DG.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
            for dep, _ in group:
                m = dep.target.module
                if id(m) not in touched and isinstance(m, nn.Module):
                    touched.add(id(m))
                    covered += sum(p.numel() for p in m.parameters(recurse=False))
        r["tp_share"] = covered / params_before
    except Exception as e:  # noqa: BLE001 - any failure is a result here
        r["tp_error"] = f"graph: {type(e).__name__}: {str(e)[:160]}"
        return r
    try:
        pruner.step()
        r["tp_prune"] = True
        r["tp_params_after"] = sum(p.numel() for p in model.parameters())
        r["tp_params_before"] = params_before
        with torch.no_grad():
            y = model(x)
        r["tp_forward"] = tuple(y.shape) == out_shape and bool(torch.isfinite(y).all())
        if not r["tp_forward"]:
            r["tp_error"] = f"forward: output {tuple(y.shape)}, expected {out_shape}"
    except Exception as e:  # noqa: BLE001
        r["tp_error"] = f"prune: {type(e).__name__}: {str(e)[:160]}"
    return r


def _tp_worker(names: list[str]) -> None:
    """Many models in one process (imports paid once); one JSON line per model, flushed."""
    import torch

    torch.set_num_threads(1)
    for name in names:
        print(json.dumps(tp_case(name)), flush=True)


def _tp_all(names: list[str], timeout: int, workers: int, out: str | None = None) -> list[dict]:
    """Run the TP cases in ``workers`` worker processes; a model that times out or kills its worker
    is recorded as such and the worker restarts from the next model."""
    import queue
    import threading

    results: dict[str, dict] = {}

    def lane(todo: list[str]) -> None:
        while todo:
            p = subprocess.Popen([sys.executable, __file__, "--tp-worker", *todo], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
            lines: queue.Queue = queue.Queue()
            threading.Thread(target=lambda: [lines.put(ln) for ln in p.stdout] + [lines.put(None)], daemon=True).start()
            while todo:
                t = time.time()
                try:
                    ln = lines.get(timeout=timeout)
                except queue.Empty:
                    ln = "timeout"
                name = todo.pop(0)
                if ln is None or ln == "timeout":
                    p.kill()
                    results[name] = {"model": name, "error": f"timeout after {timeout} s" if ln else "worker died"}
                    print(f"tp {name}: {results[name]['error']}", file=sys.stderr, flush=True)
                    break
                r = json.loads(ln)
                r["tp_wall_seconds"] = round(time.time() - t, 1)
                results[name] = r
                if out:  # as it goes: a long run cut short keeps what it measured
                    with open(out, "w") as f:
                        json.dump(list(results.values()), f, indent=1)
                print(f"tp {name}: graph={r.get('tp_graph')} prune+forward={r.get('tp_forward')} "
                      f"{r.get('tp_error', '')}", file=sys.stderr, flush=True)
            p.wait()

    lanes = [threading.Thread(target=lane, args=(names[i::workers],)) for i in range(workers)]
    for th in lanes:
        th.start()
    for th in lanes:
        th.join()
    return [results[n] for n in names]


def speed_case(name: str, repeat: int) -> dict:
    import torch
    import torch_pruning as tp

    import otonas

    model, x = _load(name, 2)
    ot = lambda: otonas.analyze(model, (x,))  # noqa: E731
    tpg = lambda: tp.DependencyGraph().build_dependency(model, example_inputs=x)  # noqa: E731
    ot(), tpg()  # warm-up: first use of torch.export / tracing imports and caches a lot
    t_ot, t_tp = [], []
    for _ in range(repeat):
        for fn, times in ((ot, t_ot), (tpg, t_tp)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return {"model": name, "params": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads(),
            "otonas_s": statistics.median(t_ot), "tp_s": statistics.median(t_tp)}


def _subprocess(args: list[str], timeout: int) -> dict:
    try:
        p = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        return {"error": (p.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(lines[-1])


def _otonas_rows(names: list[str], zoo: str | None, timeout: int, run_missing: bool = True) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for path in (zoo or "").split(","):
        if path and os.path.exists(path):
            try:
                with open(path) as f:
                    rows |= {r["model"]: r | {"source": path} for r in json.load(f)}
            except json.JSONDecodeError:  # bench_zoo.py rewrites the file after every model
                pass
    for name in names:
        if name not in rows and not run_missing:
            rows[name] = {"passed": False, "message": "not measured (not in the zoo file)"}
        elif name not in rows:
            r = _subprocess(["-m", "otonas", "verify", f"torchvision:{name}", "--json"], timeout)
            rows[name] = r | {"source": "run here", "passed": r.get("passed", False),
                              "message": r.get("message", r.get("error", ""))}
    return rows


def coverage(args: argparse.Namespace) -> list[str]:
    if args.quick:
        names = QUICK
    else:
        sys.path.insert(0, str(ROOT))
        from otonas.models import import_torchvision

        tv = import_torchvision()
        rest = [n for n in tv.models.list_models(module=tv.models) if n not in TOO_LARGE and n not in QUICK]
        names = QUICK + rest  # the quick dozen first: a run cut short still covers them
    if args.tp_json:
        with open(args.tp_json) as f:
            tp_rows = [r for r in json.load(f) if r["model"] in names]
    else:
        tp_rows = _tp_all(names, args.timeout, args.workers, args.out)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(tp_rows, f, indent=1)
    tp_rows = [r for r in tp_rows if r["model"] in names]
    ot = _otonas_rows(names, args.zoo, args.timeout, not args.skip_missing)
    out = ["| model | otonas: analyze+build+match | otonas: share of params in prunable groups | otonas: params removed at 30% of groups "
           "| TP: dependency graph | TP: 30% magnitude prune + forward | TP: share of params in layers its groups touch "
           "| TP: params removed at ratio 0.3 | TP note |",
           "|---|---|---:|---:|---|---|---:|---:|---|"]
    n_ot = n_ot_measured = n_tp_graph = n_tp = 0
    for r in tp_rows:
        o = ot.get(r["model"], {})
        ok = bool(o.get("passed"))
        measured = not str(o.get("message", "")).startswith("not measured")
        n_ot += ok
        n_ot_measured += measured
        n_tp_graph += bool(r.get("tp_graph"))
        n_tp += bool(r.get("tp_forward"))
        share = f"{o['prunable_param_share']:.1%}" if "prunable_param_share" in o else ""
        cut = f"{1 - o['params_after'] / o['params_before']:.1%}" if o.get("params_before") else ""
        tp_share = f"{r['tp_share']:.1%}" if "tp_share" in r else ""
        tp_cut = f"{1 - r['tp_params_after'] / r['tp_params_before']:.1%}" if "tp_params_after" in r else ""
        note = (r.get("tp_error") or r.get("error") or "").replace("|", "/").replace("\n", " ")[:90]
        ot_cell = "yes" if ok else "not measured" if not measured else f"NO ({str(o.get('message', 'not run'))[:50]})".replace("|", "/").replace("\n", " ")
        out.append(f"| {r['model']} | {ot_cell} | {share} | {cut} | {'yes' if r.get('tp_graph') else 'NO'} | "
                   f"{'yes' if r.get('tp_forward') else 'NO'} | {tp_share} | {tp_cut} | {note} |")
    k = len(tp_rows)
    out.append(f"| **total ({k} models)** | **{n_ot}/{n_ot_measured}** measured | | | **{n_tp_graph}/{k}** | **{n_tp}/{k}** | | | |")
    return out


def speed(args: argparse.Namespace) -> list[str]:
    out = ["| model | params | otonas.analyze (s) | TP build_dependency (s) | otonas / TP |", "|---|---:|---:|---:|---:|"]
    for name in args.models.split(","):
        r = _subprocess([__file__, "--speed-case", name, str(args.repeat)], args.timeout)
        if "error" in r:
            out.append(f"| {name} | | | | failed: {r['error'][:80]} |")
        else:
            out.append(f"| {name} | {r['params'] / 1e6:.1f} M | {r['otonas_s']:.2f} | {r['tp_s']:.2f} | "
                       f"{r['otonas_s'] / r['tp_s']:.1f}× |")
        print(out[-1], file=sys.stderr, flush=True)
    return out


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--tp-case":
        print(json.dumps(tp_case(sys.argv[2])))
        return
    if len(sys.argv) > 2 and sys.argv[1] == "--tp-worker":
        _tp_worker(sys.argv[2:])
        return
    if len(sys.argv) > 3 and sys.argv[1] == "--speed-case":
        print(json.dumps(speed_case(sys.argv[2], int(sys.argv[3]))))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["coverage", "speed"])
    ap.add_argument("--quick", action="store_true", help="a dozen models instead of the whole zoo")
    ap.add_argument("--zoo", default="bench/zoo.json", help="bench_zoo.py outputs (comma-separated) to reuse for the otonas columns")
    ap.add_argument("--out", default=None, help="write the Torch-Pruning results here as JSON")
    ap.add_argument("--tp-json", default=None, help="reuse Torch-Pruning results written by --out")
    ap.add_argument("--skip-missing", action="store_true", help="do not run otonas on models the zoo file lacks")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per model")
    ap.add_argument("--workers", type=int, default=2, help="Torch-Pruning worker processes")
    ap.add_argument("--models", default=",".join(SPEED))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print("\n".join(coverage(args) if args.what == "coverage" else speed(args)))


if __name__ == "__main__":
    main()
