"""The ``otonas`` command line."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import OtonasError, UsageError
from ._explain import check_option_types, explain

__all__ = ["main"]


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="torchvision:NAME, search_spaces:NAME or package.module:callable")
    p.add_argument("--model-kwargs", default="", metavar="JSON", help="keyword arguments for the model, as JSON")
    p.add_argument("--input-shape", action="append", default=None, metavar="SHAPE",
                   help="input shape with batch, e.g. 2,3,224,224 (repeat for several inputs)")
    p.add_argument("--input-dtype", action="append", default=None, metavar="DTYPE",
                   help="dtype of each input (float32, int64, ...); default float32 or the model's own")
    p.add_argument("--strict", choices=["auto", "yes", "no"], default="auto",
                   help="torch.export mode: auto tries non-strict first, then strict")
    p.add_argument("--gqa", choices=["kv", "query"], default="kv",
                   help="grouped-query attention: remove a key/value head with its query heads (kv, default), "
                        "or query heads by their slot in every key/value group (query)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("otonas")
    except PackageNotFoundError:  # run from a source tree that is not installed
        from .. import __version__

        return __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otonas", description="Train once, prune and erase, export a smaller network.")
    parser.add_argument("--version", action="version", version=f"otonas {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="analyze MODEL, zero random groups, build, and check the outputs match")
    _model_args(v)
    v.add_argument("--fraction", type=float, default=0.3, help="share of prunable groups to zero (default 0.3)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--export", metavar="DIR", default=None,
                   help="write the verified subnet to DIR: model.py, model.safetensors, architecture.json")
    v.add_argument("--mode", choices=["prune", "erase", "both"], default="prune",
                   help="zero random channel groups (prune), erase random valid operators (erase), or both")
    v.add_argument("-q", "--quiet", action="store_true", help="no progress lines for the stages on stderr")
    a = sub.add_parser("analyze", help="print the pruning families of MODEL and what pins the rest")
    _model_args(a)
    sh = sub.add_parser("show", help="draw MODEL's graph: families coloured, erasing groups outlined, pins marked")
    _model_args(sh)
    sh.add_argument("--out", required=True, metavar="FILE", help="graph.svg or graph.html")
    sh.add_argument("--max-nodes", type=int, default=400,
                    help="above this many ops, draw one box per module (default 400)")
    s = sub.add_parser("search", help="train MODEL once on DATA, prune/erase, build, export and report")
    s.add_argument("--config", metavar="TOML", help="options from a TOML file (keys as the flags, '-' or '_'); "
                   "flags given on the command line override it")
    s.add_argument("--model", help="torchvision:NAME, search_spaces:NAME or package.module:callable "
                   "(default search_spaces:darts)")
    s.add_argument("--data", help="digits (built in, default), fashionmnist (Debian's dataset-fashion-mnist), "
                   "fashionmnist:ROOT, synthetic, imagefolder:PATH, cifar10:ROOT")
    s.add_argument("--mode", choices=["prune", "erase", "both"], help="default: erase for supernets, else prune")
    s.add_argument("--target-sparsity", type=float, help="share of prunable channel groups to remove (default 0.5)")
    s.add_argument("--erase-budget", type=float, help="share of erasing groups to erase (default 0.5)")
    s.add_argument("--target-flops", type=float, metavar="F",
                   help="fraction of the dense FLOPs to keep: prune mode, met within 1%% by per-family quotas "
                        "(replaces --target-sparsity); erase mode, by erasing the fewest operators that reach it "
                        "(replaces --erase-budget)")
    s.add_argument("--target-params", type=float, metavar="F", help="fraction of the dense parameters to keep "
                   "(likewise)")
    s.add_argument("--target-latency", type=float, metavar="F",
                   help="fraction of the dense model's latency to keep, measured on this machine (at --latency-batch "
                        "on --latency-device) and estimated from a per-layer table cached per machine setting (prune "
                        "mode; replaces --target-sparsity); report.json records the subnet's measured latency")
    _latency_args(s)
    s.add_argument("--schedule", choices=["progressive", "half_space"],
                   help="how selected groups reach zero: progressive (default; shrunk to exactly zero period by "
                        "period, re-selected each period) or half_space (the OTOv2/v3 projection)")
    s.add_argument("--periods", type=int, help="periods of the progressive schedule (default 5)")
    s.add_argument("--round-to", type=int, metavar="N", help="every layer keeps a multiple of N channels (or all "
                   "of them; attention heads stay whole): counts that CPU/GPU kernels run fastest on, e.g. 8 "
                   "(default 1)")
    s.add_argument("--score", choices=["norm_affine", "magnitude", "taylor", "cosine_magnitude"],
                   help="how redundant a group is: norm_affine (default with --mode prune; smallest scale and "
                        "shift of its normalization layers within its family, Network Slimming's criterion; "
                        "groups without one: smallest L2 norm), magnitude (smallest L2 norm within its family), "
                        "taylor (default with erasure; -|<x, d>|, the first-order loss change of removing it, "
                        "comparable across operators) or cosine_magnitude (OTOv2's cos(x, d) + 1/mean|x|)")
    s.add_argument("--epochs", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--lr-schedule", choices=["cosine", "constant"], help="cosine decay to 0 (default) or constant")
    s.add_argument("--optimizer", choices=["dhspg", "h2spg"], help="default: dhspg to prune, h2spg to erase")
    s.add_argument("--device", help="auto (default), cpu or cuda")
    s.add_argument("--seed", type=int)
    s.add_argument("--model-kwargs", metavar="JSON", help="keyword arguments for the model, as JSON")
    s.add_argument("--download", action="store_true", default=None, help="let torchvision download cifar10/fashionmnist")
    s.add_argument("--resume", action="store_true", default=None,
                   help="continue the run in --out from its checkpoint, with the options stored there")
    s.add_argument("--overwrite", action="store_true", default=None,
                   help="start anew in an --out that holds a run: its checkpoint and outputs are removed first "
                        "(otonas's own files only)")
    s.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bar (on a terminal) or line per epoch (elsewhere)")
    s.add_argument("-q", "--quiet", action="store_true", help="print only the final summary (and errors, warnings)")
    s.add_argument("--out", help="output folder (default otonas-out)")
    s.add_argument("--json", action="store_true", help="print report.json at the end")
    s.add_argument("--debug", action="store_true", help="show tracebacks")
    t = sub.add_parser("tune", help="search the sparsity/erase budgets with Optuna: short searches, a Pareto front")
    t.add_argument("--config", metavar="TOML", help="options from a TOML file (keys as the flags; a [search] table "
                   "passes options to every trial's search, a [space] table is the budget space); flags override it")
    t.add_argument("--model", help="torchvision:NAME, search_spaces:NAME or package.module:callable "
                   "(default search_spaces:darts)")
    t.add_argument("--data", help="digits (default), fashionmnist, synthetic, imagefolder:PATH, cifar10:ROOT, fashionmnist:ROOT")
    t.add_argument("--trials", type=int, help="finished trials this process contributes to the study (default 10); "
                   "the same command run again continues up to this number")
    t.add_argument("--storage", metavar="URL", help="Optuna RDB URL (default sqlite:///OUT/study.db); "
                   "postgresql://user:pass@host/db lets several machines share one study")
    t.add_argument("--study", help="study name (default otonas)")
    t.add_argument("--objectives", help="accuracy,flops (default), accuracy,params, accuracy,latency or accuracy")
    t.add_argument("--target-flops", metavar="LO,HI",
                   help="trials draw the fraction of FLOPs to keep from [LO, HI] (prune mode; the front's cost "
                        "axis is then what users mean) instead of a group sparsity; overrides --space's ranges")
    t.add_argument("--target-latency", metavar="LO,HI",
                   help="trials draw the fraction of the dense latency to keep from [LO, HI] (prune mode; measured "
                        "at --latency-batch on --latency-device, estimated from the cached per-layer table) instead "
                        "of a group sparsity; overrides --space's ranges")
    _latency_args(t)
    t.add_argument("--space", metavar="TOML", help="budget space: ranges of sparsity/erase, per = \"global\"|\"stage\"")
    t.add_argument("--trial-epochs", type=int, help="epochs of each trial's short search (default 4)")
    t.add_argument("--epochs", type=int, help="epochs of the full search run by --export-best (default 12)")
    t.add_argument("--pruner", choices=["median", "none"], help="stop trials below the median of those that "
                   "remove at least as much (default median)")
    t.add_argument("--sampler", choices=["nsga2", "tpe", "random"], help="default nsga2 (two objectives), tpe (one)")
    t.add_argument("--mode", choices=["prune", "erase", "both"], help="what trials remove (default: erase for "
                   "supernets, else prune)")
    t.add_argument("--lr", type=float, help="learning rate of every trial's search")
    t.add_argument("--round-to", type=int, metavar="N", help="every trial's layers keep a multiple of N channels "
                   "(or all of them)")
    t.add_argument("--batch-size", type=int, help="batch size of every trial's search")
    t.add_argument("--seed", type=int)
    t.add_argument("--export-best", type=int, metavar="TRIAL", help="run the full search (--epochs) with TRIAL's "
                   "budgets and export it to OUT/best-trial-TRIAL")
    t.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    t.add_argument("--out", help="this process's folder: trials/, pareto.json/.png/.html (default otonas-tune)")
    t.add_argument("--json", action="store_true", help="print pareto.json at the end")
    t.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _options(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    """``--config`` TOML keys (``-`` or ``_``) overridden by the flags given, for the fields of
    ``config_class`` (a dataclass); an unknown key is an error naming the known ones."""
    import dataclasses
    import tomllib

    fields = {f.name for f in dataclasses.fields(config_class)}
    values: dict[str, Any] = {}
    if args.config:
        try:
            with open(args.config, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise UsageError(f"--config {args.config!r} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"--config {args.config!r} is not valid TOML: {e}") from None
        for key, value in raw.items():
            name = key.replace("-", "_")
            if name not in fields:
                raise UsageError(f"--config {args.config!r}: unknown key {key!r}; known: "
                                 f"{', '.join(sorted(f.replace('_', '-') for f in fields))}")
            values[name] = value
        check_option_types(values, config_class, source=f"--config {args.config!r}")
    for name in fields:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    return values


def _latency_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latency-batch", type=int, metavar="N", help="batch size the latency is measured at (default 1)")
    p.add_argument("--latency-device", metavar="DEV", help="cpu (default) or cuda: where the latency is measured")
    p.add_argument("--latency-threads", type=int, metavar="N",
                   help="CPU threads the latency is measured with (default: torch's setting)")
    p.add_argument("--latency-memory-format", choices=("contiguous", "channels_last"),
                   help="layout both networks (and the latency table) are timed in: contiguous (NCHW, default) or "
                        "channels_last (NHWC, what oneDNN/cuDNN convolutions run fastest on)")


def _tune_config(args: argparse.Namespace) -> Any:
    from ..tuning import TuneConfig

    values = _options(args, TuneConfig)
    if isinstance(values.get("search"), dict):
        values["search"] = {k.replace("-", "_"): v for k, v in values["search"].items()}
    if isinstance(values.get("search"), dict):
        from ..search import SearchConfig

        check_option_types(values["search"], SearchConfig, source=f"--config {args.config!r} [search]")
    search = dict(values.get("search", {}))
    for name in ("mode", "lr", "batch_size", "round_to", "latency_batch", "latency_device", "latency_threads",
                 "latency_memory_format"):
        v = getattr(args, name, None)
        if v is not None:
            search[name] = v
    values["search"] = search
    ranges = {k: getattr(args, f"target_{k}", None) for k in ("flops", "latency")}
    if all(v is not None for v in ranges.values()):
        raise UsageError("give --target-flops or --target-latency, not both")
    for key, given in ranges.items():
        if given is None:
            continue
        from ..tuning import BudgetSpace

        parts = [p.strip() for p in str(given).split(",")]
        try:
            lo, hi = (float(parts[0]), float(parts[1])) if len(parts) == 2 else (None, None)
        except ValueError:
            lo, hi = None, None
        if lo is None or hi is None:
            what = "FLOPs" if key == "flops" else "dense latency"
            raise UsageError(f"--target-{key} {given!r}: give the range of {what} fractions to keep as LO,HI, "
                             "e.g. 0.2,0.8")
        base = values.get("space")
        raw = (dict(base) if isinstance(base, dict) else
               BudgetSpace.load(base).to_dict() if isinstance(base, str) else {})
        raw.pop("flops", None)
        raw.pop("latency", None)
        raw[key] = [lo, hi]
        raw.pop("stages", None)
        raw["per"] = "global"
        values["space"] = raw
    try:
        return TuneConfig(**values)
    except TypeError as e:
        raise UsageError(f"bad tune options: {e}") from None


def _cmd_tune(args: argparse.Namespace) -> int:
    from ..tuning import export_best, format_front, tune

    cfg = _tune_config(args)
    if args.export_best is not None:
        try:
            report = export_best(cfg, args.export_best)
        except KeyboardInterrupt:
            print("otonas: interrupted; rerun the same command to resume the full search", file=sys.stderr)
            return 130
        print(f"accuracy {report['accuracy_subnet']:.4f}; params {report['params_before']:,} -> "
              f"{report['params_after']:,}; FLOPs {report['flops_before']:,} -> {report['flops_after']:,}")
        print(f"written to {cfg.out}/best-trial-{args.export_best}/ (model.py, model.safetensors, report.html)")
        return 0
    try:
        result = tune(cfg)
    except KeyboardInterrupt:
        print(f"otonas: interrupted; finished trials are in the study, the running one is resumed when the "
              f"same command is run again (--out {cfg.out})", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result))
    else:
        print(format_front(result))
        print(f"written to {cfg.out}/ (pareto.json, pareto.png, pareto.html); "
              f"export one with: otonas tune ... --export-best TRIAL")
    return 0


def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise UsageError(f"--input-dtype {name!r} is not a torch dtype; use e.g. float32 or int64")
    return dt


def _strict(value: str) -> bool | None:
    return {"auto": None, "yes": True, "no": False}[value]


def _cmd_verify(args: argparse.Namespace) -> int:
    from ..models import parse_shape
    from .. import verify

    shapes = [parse_shape(s) for s in args.input_shape] if args.input_shape else None
    dtypes = [_dtype(d) for d in args.input_dtype] if args.input_dtype else None
    report = verify(args.model, input_shapes=shapes, input_dtypes=dtypes, model_kwargs=args.model_kwargs,
                    fraction=args.fraction, seed=args.seed, strict=_strict(args.strict), mode=args.mode,
                    gqa=args.gqa, export_dir=args.export, progress=None if args.quiet else _stage_line)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        r = report
        print(f"model           {r.model}")
        print(f"families        {r.families}")
        print(f"groups          {r.groups} channel groups, {r.prunable_groups} prunable "
              f"({r.prunable_param_share:.0%} of parameters in prunable groups)")
        print(f"zeroed          {r.zeroed_groups} groups")
        if r.mode != "prune":
            print(f"erased          {len(r.erased_operators)} of {r.erasing_groups} erasing groups"
                  + (f": {', '.join(r.erased_operators[:6])}" + (" …" if len(r.erased_operators) > 6 else "")
                     if r.erased_operators else ""))
        print(f"params          {r.params_before:,} -> {r.params_after:,} "
              f"({1 - r.params_after / max(r.params_before, 1):.1%} fewer)")
        print(f"FLOPs (MACs)    {r.flops_before:,} -> {r.flops_after:,} "
              f"({1 - r.flops_after / max(r.flops_before, 1):.1%} fewer)")
        print(f"max abs diff    {r.max_abs_diff:.3g}")
        print(f"max rel diff    {r.max_rel_diff:.3g}"
              + (f" (checked at input shapes {', '.join('x'.join(map(str, c)) for c in r.checked_shapes)})"
                 if len(r.checked_shapes) > 1 else ""))
        print(f"time            analyze {r.seconds_analyze:.2f}s, build {r.seconds_build:.2f}s")
        if r.pinned:
            print(f"pinned          {len(r.pinned)} op(s) keep channels from being pruned:")
            for p in r.pinned[:12]:
                where = f" in {p['module']}" if p.get("module") else ""
                print(f"  {p['node']} ({p['op']}){where}: {p['reason']}")
            if len(r.pinned) > 12:
                print(f"  … and {len(r.pinned) - 12} more (--json lists all)")
        if r.export_dir:
            print(f"export          {r.export_dir}/ (model.py, model.safetensors, architecture.json)")
        print(f"{'PASSED' if r.passed else 'FAILED'}: {r.message}")
    return 0 if report.passed else 1


def _stage_line(text: str) -> None:
    print(f"otonas: verify {text}", file=sys.stderr, flush=True)


def _analyzed(args: argparse.Namespace) -> Any:
    from ..models import example_inputs, parse_shape, resolve_model
    from ..analysis import analyze

    resolved = resolve_model(args.model, kwargs=args.model_kwargs)
    shapes = tuple(parse_shape(s) for s in args.input_shape) if args.input_shape else resolved.input_shapes
    if not shapes:
        raise UsageError(f"no input shape is known for {args.model}; pass --input-shape, e.g. --input-shape 2,3,224,224")
    dtypes = tuple(_dtype(d) for d in args.input_dtype) if args.input_dtype else (
        resolved.input_dtypes or (torch.float32,) * len(shapes))
    xs = example_inputs(resolved.model, shapes, dtypes)
    return analyze(resolved.model, xs, strict=_strict(args.strict), gqa=args.gqa)


def _cmd_show(args: argparse.Namespace) -> int:
    from ..report import render_graph_html, render_graph_svg

    if not args.out.lower().endswith((".svg", ".html", ".htm")):
        raise UsageError(f"--out {args.out!r} must end in .svg or .html")
    space = _analyzed(args)
    render = render_graph_html if args.out.lower().endswith((".html", ".htm")) else render_graph_svg
    text = render(space, max_nodes=args.max_nodes, title=args.model)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out}: {len(space.families)} families, {space.num_erasing_groups} erasing groups, "
          f"{len(space.pins)} pins")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    space = _analyzed(args)
    if args.json:
        costs = space.costs()
        print(json.dumps({
            "model": args.model, "groups": space.num_groups, "prunable_groups": space.num_prunable_groups,
            "params": costs.params, "flops": costs.flops,
            "erasing_groups": [{"index": g.index, "module": g.module, "join": g.join, "join_kind": g.join_kind,
                                "params": list(g.params), "parent": g.parent} for g in space.erasing_groups],
            "not_erasable": [{"module": k.module, "join": k.join, "output": k.output, "reason": k.reason}
                             for k in space.segments.skipped],
            "families": [{"index": f.index, "layers": list(f.layers), "channels": f.num_channels,
                          "prunable_groups": len(f.groups),
                          "pins": [{"op": e.op, "node": e.node, "reason": e.reason, "module": e.module}
                                   for e in f.pins]} for f in space.families],
        }))
    else:
        print(space.summary())
    return 0


# options that may differ from the checkpoint's on --resume (--quiet, --json, --debug are not stored)
RESUME_FREE = ("out", "resume", "progress", "device", "download")


def _resumed(values: dict[str, Any], config_class: type) -> dict[str, Any]:
    """``--resume``: every option from the checkpoint's run.json; one given again must be the
    stored value, except those of ``RESUME_FREE``. Without a checkpoint, ``values`` as given
    (search says it starts from scratch)."""
    import dataclasses

    out = str(values.get("out", getattr(config_class, "out")))
    path = os.path.join(out, "checkpoint", "run.json")
    try:
        with open(path) as f:
            stored = json.load(f)["config"]
        if not isinstance(stored, dict):
            raise TypeError("config is not a table")
    except FileNotFoundError:
        return values
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OtonasError(f"the checkpoint in {os.path.join(out, 'checkpoint')} is corrupt ({type(e).__name__}: "
                          f"{e}); delete the folder to start again") from None
    for key, given in values.items():
        if key in RESUME_FREE or key == "overwrite" or key not in stored:
            continue
        if given != stored[key]:
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"cannot resume: the run in {out} was started with {flag} {json.dumps(stored[key])}, "
                             f"this command gives {flag} {json.dumps(given)}; drop {flag} to continue it as it "
                             "was, or use another --out")
    fields = {f.name for f in dataclasses.fields(config_class)}
    merged = {k: v for k, v in stored.items() if k in fields}
    merged.update({k: values[k] for k in RESUME_FREE if k in values})
    merged.update(out=out, resume=True, overwrite=bool(values.get("overwrite", False)))
    return merged


def _search_config(args: argparse.Namespace) -> Any:
    from ..search import SearchConfig

    values = _options(args, SearchConfig)
    if isinstance(values.get("model_kwargs"), str):
        try:
            values["model_kwargs"] = json.loads(values["model_kwargs"]) if values["model_kwargs"].strip() else {}
        except json.JSONDecodeError as e:
            raise UsageError(f"--model-kwargs is not valid JSON ({e.msg})") from None
    if values.get("resume"):
        values = _resumed(values, SearchConfig)
    if args.quiet:
        values["progress"] = False
    try:
        return SearchConfig(**values)
    except TypeError as e:
        raise UsageError(f"bad search options: {e}") from None


def _cmd_search(args: argparse.Namespace) -> int:
    from ..search import search

    cfg = _search_config(args)
    run_json = os.path.join(cfg.out, "checkpoint", "run.json")
    before = _mtime(run_json)
    try:
        report = search(cfg)
    except KeyboardInterrupt:
        after = _mtime(run_json)
        if after is not None and (cfg.resume or after != before):
            print(f"otonas: interrupted; the last finished epoch is saved (report.html is a partial report); "
                  f"to continue: otonas search --resume --out {shlex.quote(cfg.out)}", file=sys.stderr)
        else:
            print("otonas: interrupted before an epoch was saved; nothing to resume: run the same command again",
                  file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "config"}))
    else:
        r = report
        print(f"accuracy        full {r['accuracy_full']:.4f}, subnet {r['accuracy_subnet']:.4f} "
              f"(max abs diff {r['max_abs_diff']:.2g})")
        print(f"params          {r['params_before']:,} -> {r['params_after']:,}")
        print(f"FLOPs (MACs)    {r['flops_before']:,} -> {r['flops_after']:,}")
        lat = r.get("latency")
        if lat:
            est = lat.get("estimated_fraction")
            print(f"latency         {1e3 * lat['dense_seconds']:.2f} ms -> {1e3 * lat['subnet_seconds']:.2f} ms "
                  f"({lat['measured_fraction']:.1%} of dense measured" + (f", {est:.1%} estimated" if est else "")
                  + f"; batch {lat['batch']} on {lat['device']}, {lat['threads']} thread(s)"
                  + (f", {lat['memory_format']}" if lat.get("memory_format", "contiguous") != "contiguous" else "")
                  + ")")
        print(f"channel groups  {r['removed_groups']:,} of {r['prunable_groups']:,} prunable removed "
              f"(group sparsity {r['group_sparsity']:.3f})" + ("" if r["mode"] == "prune" else
                                                              f"; erased {len(r['erased_operators'])} of "
                                                              f"{r['erasing_groups']} erasing groups"))
        print(f"written to      {cfg.out}/ (report.html, report.json, model.py, model.safetensors, architecture.json)")
    return 0


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime_ns / 1e9
    except OSError:
        return None


def _showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
    """A warning as one line, without the source line it was raised from."""
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    try:
        print(f"otonas: warning: {text}", file=file if file is not None else sys.stderr, flush=True)
    except OSError:  # stderr closed: a warning must never end a run
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from .. import logging as otonas_logging

    before = otonas_logging.get_verbosity()
    # --quiet: otonas's messages down to warnings (and errors); the command's own output stays
    otonas_logging.set_verbosity(otonas_logging.WARNING if getattr(args, "quiet", False) else otonas_logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _showwarning
            return _dispatch(parser, args)
    finally:
        otonas_logging.set_verbosity(before)


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        if args.command == "verify":
            return _cmd_verify(args)
        if args.command == "analyze":
            return _cmd_analyze(args)
        if args.command == "search":
            return _cmd_search(args)
        if args.command == "show":
            return _cmd_show(args)
        if args.command == "tune":
            return _cmd_tune(args)
    except KeyboardInterrupt:
        print("otonas: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line (the traceback too with --debug); explain() says what it means
        if getattr(args, "debug", False):
            traceback.print_exc()
            details = getattr(e, "details", "")
            if details.strip():
                print(details.rstrip(), file=sys.stderr)
        message = explain(e, out=getattr(args, "out", None) or None)
        if message is not None:
            print(f"otonas: error: {' '.join(message.splitlines())}", file=sys.stderr)
        else:  # a bug of ours
            print(f"otonas: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                  "(rerun with --debug for the traceback, and please report it)", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2
