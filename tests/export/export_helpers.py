"""Helpers of the export tests: a Python in which otonas cannot be imported, and exporting a
model with random zero groups next to the subnet's outputs."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import re
import subprocess
import venv
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils import _pytree as pytree

import otonas
from otonas.testing import zero_groups_
from otonas.export import export

RUNNER = Path(__file__).with_name("plain_runner.py")


def _closure(dists: list[str]) -> set[str]:
    """The distributions ``dists`` need, following their (non-extra) requirements."""
    seen: set[str] = set()
    todo = list(dists)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        seen.add(key)
        todo += [re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0] for r in reqs if "extra ==" not in r]
    return seen


def _top_level_modules(dists: set[str]) -> list[str]:
    out = []
    for module, owners in md.packages_distributions().items():
        if any(o.lower().replace("_", "-") in dists for o in owners) and not module.startswith("__"):
            out.append(module)
    return out


def make_plain_python(root: Path) -> Path:
    """A fresh virtual environment in ``root`` holding only torch, safetensors and what they
    require (linked from this one); otonas, numpy and the repository are out of its reach."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    python = root / "bin" / "python"
    site = Path(subprocess.run([python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for module in _top_level_modules(_closure(["torch", "safetensors"])):
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin in (None, "built-in", "frozen"):
            continue
        source = Path(spec.submodule_search_locations[0]) if spec.submodule_search_locations else Path(spec.origin)
        target = site / source.name
        if not target.exists():
            target.symlink_to(source)
    probe = subprocess.run([python, "-I", "-c", "import torch, safetensors.torch, importlib.util, sys; "
                            "sys.exit(3 if importlib.util.find_spec('otonas') else 0)"],
                           cwd=root, capture_output=True, text=True)
    assert probe.returncode == 0, f"the plain Python is not usable or sees otonas: {probe.stderr[-2000:]}"
    return python


def run_plain(python: Path, manifest: list[dict], workdir: Path) -> dict:
    """Load and run every export of ``manifest`` in the plain Python; its results by name."""
    (workdir / "manifest.json").write_text(json.dumps(manifest))
    proc = subprocess.run([python, "-I", str(RUNNER), str(workdir / "manifest.json"), str(workdir / "results.json")],
                          cwd=workdir, capture_output=True, text=True, timeout=1200,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["otonas_importable"] is False
    return results["models"]


def random_zero(space: otonas.SearchSpace, fraction: float = 0.3, seed: int = 1) -> np.ndarray:
    """Zero a random ``fraction`` of the prunable groups in the model; the mask of removed groups."""
    n = space.num_prunable_groups
    mask = np.zeros(n, dtype=bool)
    if n:
        rng = np.random.default_rng(seed)
        mask[rng.choice(n, size=max(1, int(round(fraction * n))), replace=False)] = True
    mask = space.removable(mask)
    zero_groups_(space, mask)
    return mask


def make_inputs(shapes, dtype, batch, seed, vocab=20):
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in shapes:
        s = (batch, *s[1:])
        out.append(torch.randn(s, generator=g) if dtype.is_floating_point else torch.randint(0, vocab, s, generator=g))
    return tuple(out)


def export_for_plain(name: str, model: torch.nn.Module, shapes, dtype, out: Path, *, vocab: int = 20) -> dict:
    """Analyze, zero 30% of the groups, export; save inputs at batch 1 and 3 with the subnet's
    outputs. The manifest entry for :func:`run_plain`."""
    model.eval()
    torch.manual_seed(0)
    space = otonas.analyze(model, make_inputs(shapes, dtype, 2, 0, vocab))
    random_zero(space)
    subnet = otonas.build(space)
    result = export(space, out / name)
    assert result.max_rel_diff is not None and result.max_rel_diff <= 1e-4
    assert result.gaps == (), result.gaps  # every op of the verify set has a readable form
    cases = []
    for batch in (1, 3):
        xs = make_inputs(shapes, dtype, batch, batch, vocab)
        with torch.no_grad():
            ys = pytree.tree_leaves(subnet(*xs))
        fin, fout = out / f"{name}.b{batch}.in.safetensors", out / f"{name}.b{batch}.out.safetensors"
        save_file({str(i): x.contiguous() for i, x in enumerate(xs)}, str(fin))
        save_file({str(i): y.contiguous() for i, y in enumerate(ys)}, str(fout))
        cases.append({"inputs": str(fin), "outputs": str(fout)})
    return {"name": name, "dir": str(out / name), "cases": cases}

