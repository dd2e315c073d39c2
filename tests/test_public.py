"""The public homes of the error classes and the test helpers."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

import otonas
import otonas.errors
import otonas.testing


def test_every_error_and_warning_class_is_in_otonas_errors():
    for info in pkgutil.walk_packages(otonas.__path__, "otonas."):
        if info.name.startswith(("otonas.cli", "otonas.__main__")):  # the CLI runs on import / at call time
            continue
        importlib.import_module(info.name)

    def subclasses(cls):  # type: ignore[no-untyped-def]
        for c in cls.__subclasses__():
            yield c
            yield from subclasses(c)

    ours = {c for base in (Exception,) for c in subclasses(base) if c.__module__.startswith("otonas.")
            and (issubclass(c, otonas.OtonasError) or issubclass(c, Warning))}
    exported = {getattr(otonas.errors, n) for n in otonas.errors.__all__}
    assert ours <= exported, sorted(c.__qualname__ for c in ours - exported)


def test_testing_helpers_zero_groups_and_draw_valid_erasures():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    space = otonas.analyze(model, (torch.randn(2, 3, 8, 8),))
    mask = np.zeros(space.num_prunable_groups, dtype=bool)
    mask[[1, 5]] = True
    otonas.testing.zero_groups_(space, mask)
    assert (space.zero_groups() == mask).all()
    assert 0 < otonas.testing.prunable_param_share(space) <= 1


# --- no private cross-package imports ----------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _package_of(dotted: str) -> str:
    """The package that owns module or package ``dotted`` (itself when it is a package)."""
    path = ROOT.joinpath(*dotted.split("."))
    return dotted if (path / "__init__.py").exists() else dotted.rpartition(".")[0]


def _owner(dotted: str) -> str | None:
    """For a dotted path inside otonas with a private part, the package whose private it is; None if all public."""
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if _private(part):
            return _package_of(".".join(parts[:i]))
    return None


def private_imports(path: Path) -> list[str]:
    """``path``'s imports of a private module or name that belongs to another otonas package
    (for a file outside otonas/, of any private otonas module or name)."""
    return _private_imports(path.read_text(), path.relative_to(ROOT))


def _private_imports(source_text: str, rel_path: Path) -> list[str]:
    rel = rel_path.with_suffix("")
    module = ".".join(rel.parts)
    inside = rel.parts[0] == "otonas"
    own = _package_of(module) if inside else None
    found = []
    for node in ast.walk(ast.parse(source_text, str(rel_path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # the same for pkg/__init__.py (module pkg.__init__) and pkg/mod.py
                base = module.split(".")[:-node.level]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [source] + [f"{source}.{a.name}" for a in node.names if _private(a.name)]
        for target in targets:
            if target.split(".")[0] != "otonas":
                continue
            owner = _owner(target)
            if owner is not None and owner != own:
                found.append(f"{rel_path}:{node.lineno}: {target}")
    return found


def test_the_private_import_check_finds_what_it_should():
    text = ("from ..optim._score import SCORES\nfrom .._models import resolve_model\nfrom ._run import _make_model\n"
            "from ..optim import _kernels\nimport otonas.export._graph\nfrom ..search import prepare\n")
    found = _private_imports(text, Path("otonas/search/_probe.py"))
    assert [f.split(": ")[1] for f in found] == ["otonas.optim._score", "otonas._models", "otonas.optim._kernels",
                                                "otonas.export._graph"]
    assert _private_imports("from ._verify import verify\n", Path("otonas/__init__.py")) == []
    assert _private_imports("from otonas._verify import verify\n", Path("bench/b.py")) == \
        ["bench/b.py:1: otonas._verify"]


def test_no_module_imports_another_packages_privates():
    files = [*sorted((ROOT / "otonas").rglob("*.py")), *sorted((ROOT / "bench").rglob("*.py")),
             *sorted((ROOT / "examples").rglob("*.py"))]
    assert len(files) > 50
    violations = [v for f in files for v in private_imports(f)]
    assert not violations, "\n".join(violations)


# --- one logger tree -----------------------------------------------------------------------------

def test_messages_go_through_the_otonas_logger_tree():
    import subprocess
    import sys

    code = ("import otonas.logging as L\n"
            "L.get_logger('otonas.tuning').info('trial 1 starts')\n"
            "L.get_logger('otonas.search').info('no checkpoint')\n"
            "L.get_logger('otonas.search').warning('could not write')\n"
            "L.get_logger('otonas.progress').info('epoch 1/1: loss 0.1')\n"
            "L.set_verbosity(L.WARNING)\n"
            "L.get_logger('otonas.tuning').info('hidden')\n"
            "L.get_logger('otonas.optim').warning('still shown')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stderr.splitlines() == ["otonas tune: trial 1 starts", "otonas: no checkpoint",
                                     "otonas: warning: could not write", "epoch 1/1: loss 0.1",
                                     "otonas: warning: still shown"]
    # an application that configured logging gets the records through its own handlers, once
    code = "import logging, otonas.logging as L\nlogging.basicConfig(format='app %(name)s %(message)s')\n" \
           "L.get_logger('otonas.search').warning('w')\n"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.stderr.splitlines() == ["app otonas.search w"]


def test_library_code_writes_no_messages_to_stderr_itself():
    """Messages go to the ``otonas.<package>`` loggers; only the CLI prints (its own output)."""
    offenders = []
    for path in sorted((ROOT / "otonas").rglob("*.py")):
        if "cli" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders
