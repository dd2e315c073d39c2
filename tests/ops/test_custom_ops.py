"""Custom ops keep their namespace in model.py, which imports the module that registers them;
an op registered where model.py cannot import it (``__main__``) makes export say so."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import custom_op_lib  # noqa: F401  (registers otonas_tests::scale)
import torch
from torch import nn

import otonas


class UsesCustom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.ops.otonas_tests.scale(self.a(x), 2.0))


def test_custom_op_keeps_its_namespace_and_import(tmp_path):
    torch.manual_seed(0)
    model = UsesCustom().eval()
    x = torch.randn(2, 3, 8, 8)
    subnet = otonas.build(otonas.analyze(model, (x,)))
    otonas.export(subnet, tmp_path, example_inputs=(x,))
    code = (tmp_path / "model.py").read_text()
    assert "torch.ops.otonas_tests.scale.default(" in code and "torch.ops.aten.scale" not in code
    assert "import custom_op_lib" in code
    with torch.no_grad():
        torch.testing.assert_close(otonas.load(tmp_path)(x), model(x))
    # a fresh process that can import the registering module loads and runs it
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(custom_op_lib.__file__.rsplit('/', 1)[0])!r})
        import otonas
        m = otonas.load({str(tmp_path)!r})
        print(tuple(m(torch.randn(1, 3, 8, 8)).shape))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("(1, 2, 8, 8)")


def test_custom_op_from_main_is_refused_by_name(tmp_path):
    script = textwrap.dedent(f"""
        import torch
        from torch import nn
        import otonas
        from otonas.export import ExportError

        @torch.library.custom_op("otonas_main::twice", mutates_args=())
        def twice(x: torch.Tensor) -> torch.Tensor:
            return x * 2

        @twice.register_fake
        def _(x):
            return torch.empty_like(x)

        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = nn.Conv2d(3, 4, 1)
            def forward(self, x):
                return torch.ops.otonas_main.twice(self.a(x))

        m = M().eval()
        x = torch.randn(2, 3, 4, 4)
        try:
            otonas.export(otonas.build(otonas.analyze(m, (x,))), {str(tmp_path)!r}, example_inputs=(x,))
        except ExportError as e:
            print("REFUSED", e)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "REFUSED" in out.stdout and "otonas_main::twice" in out.stdout and "importable module" in out.stdout
