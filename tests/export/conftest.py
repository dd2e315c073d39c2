from __future__ import annotations

from pathlib import Path

import pytest

from export_helpers import make_plain_python


@pytest.fixture(scope="session")
def plain_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python with torch and safetensors only (made once per test session)."""
    return make_plain_python(tmp_path_factory.mktemp("plain-python"))
