"""The one place where the command line turns an exception into its one-line message.

otonas's own errors (:class:`~otonas.OtonasError`) already name the culprit and the fix. What
else a user can cause — a full disk, a folder they cannot write, a missing file, a value of the
wrong type in a ``--config`` file — is explained here too; anything left is a bug of ours and
says so. ``--debug`` adds the traceback in every case.
"""

from __future__ import annotations

import errno
import os
import re
import types
import typing
from typing import Any

from ..errors import OtonasError, UsageError

__all__ = ["explain", "check_option_types"]

# Rust libraries (safetensors) report an I/O failure inside their own exception, as
# "... (os error 28)" (Display) or "IoError(Os { code: 28, ... })" (Debug)
_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)|\bOs \{ code: (\d+)")


def explain(exc: BaseException, *, out: str | None = None) -> str | None:
    """The message after ``otonas: error:`` for ``exc``, or None when it is unexpected (a bug).

    ``out`` is the run folder of the command, named when an OS error carries no path (a write
    to an open file that fails on a full disk)."""
    if isinstance(exc, OtonasError):
        return str(exc)
    os_error = _os_error(exc)
    if os_error is not None:
        return _os_message(os_error, out)
    return None


def _os_error(exc: BaseException) -> OSError | None:
    """``exc`` or an exception it was raised from, as an OSError, when one of them is one."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return e
        m = _OS_ERROR_CODE.search(str(e))
        if m is not None:
            code = int(m.group(1) or m.group(2))
            return OSError(code, os.strerror(code))
        e = e.__cause__ or e.__context__
    return None


def _os_message(e: OSError, out: str | None) -> str:
    path = e.filename if e.filename is not None else None
    where = repr(os.fspath(path)) if path is not None else (f"a file in {out!r}" if out else "a file")
    code = e.errno
    reason = e.strerror or os.strerror(code or 0)
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on the device" if code == errno.ENOSPC else "disk quota exceeded"
        return f"cannot write {where}: {what}; free some space there or pass an --out on another disk"
    if code == errno.EROFS:
        return f"cannot write {where}: it is on a read-only file system; pass an --out on a writable disk"
    if code in (errno.EACCES, errno.EPERM):
        return (f"cannot access {where}: permission denied; check its permissions, or pass an --out "
                "folder you can write to")
    if code == errno.ENOENT:
        return f"{where} does not exist (or a folder above it does not); check the path"
    if code == errno.ENOTDIR:
        return f"{where}: a part of the path is a file, not a folder; check the path"
    if code == errno.EISDIR:
        return f"{where} is a folder where a file was expected; check the path"
    name = errno.errorcode.get(code or 0, "OSError")
    return f"{where}: {reason} ({name})"


# --- the types of --config values -----------------------------------------------------------

def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


def _fits(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is dict or hint is dict:
        args = typing.get_args(hint)
        if not isinstance(value, dict):
            return False
        return not args or all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    if origin is list or hint is list:
        args = typing.get_args(hint)
        return isinstance(value, list) and (not args or all(_fits(v, args[0]) for v in value))
    return True  # a type this check does not know: the options' own validation decides


def _describe(hint: Any) -> str:
    names = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string",
             type(None): "none"}
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(h) for h in typing.get_args(hint) if h is not type(None)]
        return " or ".join(parts)
    if origin is dict or hint is dict:
        args = typing.get_args(hint)
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
        return f"a table of {plural[args[1]]}" if args and args[1] in plural else "a table"
    if origin is list or hint is list:
        return "an array"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def check_option_types(values: dict[str, Any], config_class: type, *, source: str) -> None:
    """Raise a :class:`UsageError` naming ``source``, the key, the type expected and the value given
    for the first value in ``values`` that does not fit the type of ``config_class``'s field."""
    import json

    hints = typing.get_type_hints(config_class)
    for key, value in values.items():
        hint = hints.get(key)
        if hint is None or _fits(value, hint):
            continue
        shown = json.dumps(value) if isinstance(value, (str, int, float, bool, list, dict)) else repr(value)
        raise UsageError(f"{source}: key {key.replace('_', '-')!r} must be {_describe(hint)}, got {shown} "
                         f"({_kind(value)})" + (f"; write {key.replace('_', '-')} = {value}" if _numeric(value, hint)
                                                else ""))


def _numeric(value: Any, hint: Any) -> bool:
    """Whether ``value`` is a string holding the number that ``hint`` wants (``epochs = "2"``)."""
    if not isinstance(value, str):
        return False
    try:
        number: Any = int(value)
    except ValueError:
        try:
            number = float(value)
        except ValueError:
            return False
    return _fits(number, hint)
