"""Channel ids: a vectorised union-find over integer ids, with two flags per class.

Every position along every tensor dimension of the captured graph carries an id.
Ops unify ids (a residual add unifies the channels of its operands), and the classes
of ids that contain a *channel* id (one minted by a layer's output dimension) and no
*pinned* id (a model input or output, an op without a rule) are the pruning groups.
Flags live on class roots and are merged on union, so they can be read mid-pass.
"""

from __future__ import annotations

import numpy as np

__all__ = ["IdTable"]


class IdTable:
    def __init__(self) -> None:
        self._parent = np.zeros(1024, dtype=np.int64)
        self._channel = np.zeros(1024, dtype=bool)
        self._pinned = np.zeros(1024, dtype=bool)
        self._reason = np.full(1024, -1, dtype=np.int32)  # per id, not per root: for reports
        self.reasons: list[str] = []
        self._reason_index: dict[str, int] = {}
        self.n = 0

    def _grow(self, need: int) -> None:
        cap = len(self._parent)
        if need <= cap:
            return
        new = max(need, 2 * cap)
        self._parent = np.concatenate([self._parent, np.zeros(new - cap, dtype=np.int64)])
        self._channel = np.concatenate([self._channel, np.zeros(new - cap, dtype=bool)])
        self._pinned = np.concatenate([self._pinned, np.zeros(new - cap, dtype=bool)])
        self._reason = np.concatenate([self._reason, np.full(new - cap, -1, dtype=np.int32)])

    def new(self, size: int, *, channel: bool = False, pin: str | None = None) -> np.ndarray:
        """Mint ``size`` fresh ids, each its own class."""
        start = self.n
        self._grow(start + size)
        ids = np.arange(start, start + size, dtype=np.int64)
        self._parent[start : start + size] = ids
        self._channel[start : start + size] = channel
        self._pinned[start : start + size] = False
        self._reason[start : start + size] = -1
        self.n = start + size
        if pin is not None:
            self.pin(ids, pin)
        return ids

    def find(self, ids: np.ndarray) -> np.ndarray:
        parent = self._parent
        roots = parent[ids]
        while True:
            up = parent[roots]
            if np.array_equal(up, roots):
                break
            roots = parent[up]
        parent[ids] = roots  # path compression
        return roots

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Unify ``a[i]`` with ``b[i]`` for every i (arrays of equal length)."""
        a = np.asarray(a, dtype=np.int64).ravel()
        b = np.asarray(b, dtype=np.int64).ravel()
        if a.shape != b.shape:
            raise ValueError(f"union of id arrays of different lengths {a.shape} and {b.shape}")
        while a.size:
            ra, rb = self.find(a), self.find(b)
            differ = ra != rb
            if not differ.any():
                return
            ra, rb, a, b = ra[differ], rb[differ], a[differ], b[differ]
            lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
            # Parents only ever point to smaller ids, so no cycle can form; when one root
            # is paired with several others, the last write wins and the loop does the rest.
            self._parent[hi] = lo
            np.logical_or.at(self._channel, lo, self._channel[hi])
            np.logical_or.at(self._pinned, lo, self._pinned[hi])

    def union_all(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if ids.size > 1:
            self.union(ids[1:], np.full(ids.size - 1, ids[0]))

    def mark_channel(self, ids: np.ndarray) -> None:
        self._channel[self.find(np.asarray(ids, dtype=np.int64))] = True

    def pin(self, ids: np.ndarray, reason: str) -> None:
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if not ids.size:
            return
        code = self._reason_index.get(reason)
        if code is None:
            code = self._reason_index[reason] = len(self.reasons)
            self.reasons.append(reason)
        unset = ids[self._reason[ids] < 0]
        self._reason[unset] = code
        self._pinned[self.find(ids)] = True

    def is_channel(self, ids: np.ndarray) -> np.ndarray:
        return self._channel[self.find(ids)]

    def is_pinned(self, ids: np.ndarray) -> np.ndarray:
        return self._pinned[self.find(ids)]

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Roots of all ids, and per root: channel flag, pinned flag, first pin reason code."""
        roots = self.find(np.arange(self.n, dtype=np.int64))
        channel = self._channel[: self.n][roots]
        pinned = self._pinned[: self.n][roots]
        reason = np.full(self.n, -1, dtype=np.int32)
        has = np.nonzero(self._reason[: self.n] >= 0)[0]
        # first reason (lowest id) wins per root: assign in reverse so low ids overwrite
        reason[roots[has[::-1]]] = self._reason[has[::-1]]
        return roots, channel, pinned, reason
