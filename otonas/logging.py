"""otonas's messages: one logger tree under ``otonas``, one handler on stderr.

Each package logs to ``logging.getLogger("otonas.<package>")`` (``otonas.search``,
``otonas.tuning``, ``otonas.optim``, ...); the plain per-epoch lines of a run without a
progress bar go to ``otonas.progress``. The ``otonas`` logger (level INFO) has one handler
that writes to stderr in the CLI's format — ``otonas: warning: ...`` for warnings,
``otonas: ...`` (``otonas tune: ...`` for tuning, nothing for progress lines) otherwise —
unless the application has configured logging (the root logger has handlers): the records
then propagate to those handlers only, so nothing is written twice.

To quiet otonas, ``otonas.logging.set_verbosity(otonas.logging.WARNING)``.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["get_logger", "set_verbosity", "get_verbosity", "DEBUG", "INFO", "WARNING", "ERROR"]

DEBUG, INFO, WARNING, ERROR = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR

ROOT = "otonas"
# what an INFO line starts with, by logger (and its children); every other logger: "otonas: "
_PREFIXES = {"otonas.tuning": "otonas tune: ", "otonas.progress": ""}


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"otonas: error: {text}"
        if record.levelno >= logging.WARNING:
            return f"otonas: warning: {text}"
        name = record.name
        while name and name not in _PREFIXES:
            name = name.rpartition(".")[0]
        return _PREFIXES.get(name, "otonas: ") + text


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when the record comes (redirected, captured), flushed at
    once; stands aside when the application's root logger has handlers of its own."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return
        self.stream = sys.stderr
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # stderr closed: a message must never end a run
        pass


def _root() -> logging.Logger:
    root = logging.getLogger(ROOT)
    if not getattr(root, "_otonas_ready", False):
        handler = _StderrHandler()
        handler.setFormatter(_Formatter())
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root._otonas_ready = True  # type: ignore[attr-defined]  # once: a user's handlers.clear() stays cleared
    return root


def get_logger(name: str) -> logging.Logger:
    """The logger ``name`` (``"otonas.<package>"``), with the ``otonas`` handler in place."""
    _root()
    return logging.getLogger(name)


def set_verbosity(level: int) -> None:
    """Show otonas's messages from ``level`` up (``INFO`` by default; ``WARNING`` keeps warnings only)."""
    _root().setLevel(level)


def get_verbosity() -> int:
    return _root().getEffectiveLevel()
