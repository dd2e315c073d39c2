"""The ``otonas`` command line (``otonas verify``, ``otonas analyze``)."""

from ._main import main

__all__ = ["main"]
