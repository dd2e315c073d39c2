"""Save nested state (optimizer ``state_dict``s, RNG states, histories) without pickle:
tensors go to one safetensors file, everything else to JSON beside it. And the lock that keeps
two processes out of one run folder."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import BusyError, OtonasError

try:
    import fcntl
except ImportError:  # not POSIX: the pid/host record alone guards the folder
    fcntl = None  # type: ignore[assignment]

__all__ = ["save_state", "load_state", "atomic_write_text", "folder_lock", "pid_alive", "LOCK_NAME"]

LOCK_NAME = ".lock"


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = path or "root"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _encode(v, tensors, f"{path}.{k}") for k, v in obj.items()}}
        return {"__items__": [[_encode(k, tensors, f"{path}.k{i}"), _encode(v, tensors, f"{path}.{i}")]
                              for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).replace("torch.", "")}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise OtonasError(f"cannot save a {type(obj).__name__} at {path or 'the top'} without pickle; "
                      "state must hold tensors, numbers, strings, lists, tuples and dicts")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__dict__"].items()}
        if "__items__" in obj:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__dtype__" in obj:
            return getattr(torch, obj["__dtype__"])
    return obj


def atomic_write_text(path: str, text: str) -> None:
    """Write then rename, so an interruption never leaves a half-written file."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_state(obj: Any, prefix: str) -> None:
    """Write ``prefix.json`` and ``prefix.safetensors`` (each atomically)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(obj, tensors, "")
    d = os.path.dirname(os.path.abspath(prefix))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".safetensors")
    os.close(fd)
    # safetensors refuses tensors that share memory; clone the aliases
    seen: dict[int, str] = {}
    for k, t in list(tensors.items()):
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen and ptr != -1:
            tensors[k] = t.clone()
        seen[ptr] = k
    save_file(tensors, tmp)
    os.replace(tmp, prefix + ".safetensors")
    atomic_write_text(prefix + ".json", json.dumps(tree))


def load_state(prefix: str) -> Any:
    try:
        with open(prefix + ".json") as f:
            tree = json.load(f)
        tensors = load_file(prefix + ".safetensors")
    except FileNotFoundError as e:
        raise OtonasError(f"checkpoint file {e.filename} is missing") from None
    except Exception as e:  # safetensors and json raise their own kinds on corrupt files
        raise OtonasError(f"checkpoint {prefix}.* is corrupt ({type(e).__name__}: {e}); "
                          "delete it and start again, or resume from another run") from None
    try:
        return _decode(tree, tensors)
    except KeyError as e:
        raise OtonasError(f"checkpoint {prefix}.* is corrupt: tensor {e} is missing") from None


# --- the run-folder lock ------------------------------------------------------------------

def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False
    return True


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started, in seconds since the epoch (Linux /proc); None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _read_holder(f: Any) -> dict[str, Any] | None:
    f.seek(0)
    try:
        holder = json.loads(f.read() or "null")
    except ValueError:
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _holder_gone(holder: dict[str, Any] | None) -> bool:
    """A lock whose record names no process, or a process of this host that has ended, is stale.
    Another host's process cannot be checked from here: it is taken to be running."""
    if holder is None:
        return True
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder["pid"]
    if pid == os.getpid():  # our own pid, yet the flock was free: a dead process's pid, reused
        return fcntl is not None
    if not pid_alive(pid):
        return True
    started, began = holder.get("started"), _process_start(pid)
    # the pid now belongs to a process younger than the lock: the holder died and its pid was reused
    return isinstance(started, (int, float)) and began is not None and began > started + 2.0


def _busy(folder: str, path: str, holder: dict[str, Any] | None) -> BusyError:
    if holder is None:
        return BusyError(f"{folder} is in use by another otonas process (it holds {path}); wait for it to end "
                         "or pass another --out")
    when = holder.get("time") or "?"
    return BusyError(f"{folder} is in use by {holder.get('command') or 'another otonas process'} "
                     f"(pid {holder['pid']} on host {holder.get('host') or '?'}, since {when}); wait for it to end "
                     f"or pass another --out; if that process is gone, delete {path}")


@contextlib.contextmanager
def folder_lock(folder: str, command: str = "otonas search") -> Iterator[dict[str, Any]]:
    """Hold ``folder/.lock`` while the body runs: a JSON record of this process (pid, host, start
    time, command) kept flock'ed; it is removed on the way out, exceptions and Ctrl-C included.

    A lock held by a live process — flock'ed, or naming a running pid of this host, or any pid
    of another host — raises :class:`BusyError` naming the holder and the fix. One left behind by
    a process that is gone (killed, machine restarted) is taken over."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    for _ in range(20):
        f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+")
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    if e.errno in (errno.EAGAIN, errno.EACCES):
                        raise _busy(folder, path, _read_holder(f)) from None
                    raise
            holder = _read_holder(f)
            if not _holder_gone(holder):
                raise _busy(folder, path, holder)
            try:  # released (removed) and made anew since we opened it: try the new one
                same = os.path.samestat(os.fstat(f.fileno()), os.stat(path))
            except FileNotFoundError:
                same = False
            if not same:
                f.close()
                continue
            now = time.time()
            record = {"pid": os.getpid(), "host": socket.gethostname(), "started": now,
                      "time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)), "command": command}
            f.seek(0)
            f.truncate()
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            f.close()
            raise
        break
    else:
        raise BusyError(f"could not take {path}: other processes keep replacing it; pass another --out")
    try:
        yield record
    finally:
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(f.fileno()), os.stat(path)):
                os.unlink(path)
        f.close()
