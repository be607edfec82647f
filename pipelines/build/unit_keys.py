"""Compact key representations for the plan: sha256 digests as 32-byte values instead of hex strings.

The persisted ledger keeps hex strings (schemas/columns.py); inside the plan a key is a
`fixed_size_binary(32)` Arrow value (or a row of an (n, 32) uint8 numpy array): 32 bytes per unit
instead of a ~113-byte Python str in a ~100-byte dict slot. Conversions are vectorised over the
Arrow buffers: no Python object per key. `KeySet` / `KeyMap` keep the small set/dict surface the
callers of `Plan.reused_keys` / `Plan.reuse_from` use (membership by hex key, iteration, len).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DIGEST = pa.binary(32)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_NIBBLE = np.full(256, 255, dtype=np.uint8)
_NIBBLE[_HEX] = np.arange(16, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"ABCDEF", dtype=np.uint8)] = np.arange(10, 16, dtype=np.uint8)


def _combined(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def digest_array(buf: bytes | np.ndarray, n: int) -> pa.FixedSizeBinaryArray:
    """n concatenated 32-byte digests as a fixed_size_binary(32) array (no copy of `buf`)."""
    data = pa.py_buffer(buf if isinstance(buf, (bytes, bytearray)) else np.ascontiguousarray(buf).tobytes())
    return pa.FixedSizeBinaryArray.from_buffers(DIGEST, n, [None, data])


def digests_of(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(n, 32) uint8 view of a fixed_size_binary(32) array without nulls."""
    a = _combined(arr)
    if len(a) == 0:
        return np.zeros((0, 32), dtype=np.uint8)
    raw = np.frombuffer(a.buffers()[1], dtype=np.uint8)
    return raw[a.offset * 32:(a.offset + len(a)) * 32].reshape(-1, 32)


def hex_to_digest(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """64-char hex strings -> fixed_size_binary(32), vectorised; nulls stay null. A value that is not
    64 hex chars (never a generation key) maps to an all-0xFF digest, which no sha256 hex equals.
    Chunk by chunk: a column of more than 2 GB of hex never has to be combined into one array."""
    if isinstance(arr, pa.ChunkedArray):
        parts = [_hex_to_digest(c) for c in arr.chunks if len(c)]
        return pa.concat_arrays(parts) if parts else pa.array([], DIGEST)
    return _hex_to_digest(arr)


def _hex_to_digest(arr: pa.Array) -> pa.Array:
    a = arr.cast(pa.string())
    n = len(a)
    if n == 0:
        return pa.array([], DIGEST)
    valid = np.asarray(a.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    offsets = np.frombuffer(a.buffers()[1], dtype=np.int32)[a.offset:a.offset + n + 1]
    data = np.frombuffer(a.buffers()[2], dtype=np.uint8) if a.buffers()[2] is not None else np.zeros(0, np.uint8)
    good = valid & (np.diff(offsets) == 64)
    out = np.full((n, 32), 255, dtype=np.uint8)
    good_rows = np.flatnonzero(good)
    for lo in range(0, len(good_rows), 1 << 16):  # slices: the gather index is 512 bytes per key
        rows = good_rows[lo:lo + (1 << 16)]
        nib = _NIBBLE[data[offsets[rows][:, None] + np.arange(64, dtype=np.int32)]]
        ok = (nib != 255).all(axis=1)
        out[rows[ok]] = (nib[ok, 0::2] << 4) | nib[ok, 1::2]
    mask = pa.array(~valid) if not valid.all() else None
    res = digest_array(out, n)
    return pc.if_else(mask, pa.nulls(n, DIGEST), res) if mask is not None else res


def digest_to_hex(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """fixed_size_binary(32) (no nulls) -> 64-char lowercase hex strings, vectorised."""
    d = digests_of(arr)
    n = len(d)
    chars = np.empty((n, 64), dtype=np.uint8)
    chars[:, 0::2] = _HEX[d >> 4]
    chars[:, 1::2] = _HEX[d & 15]
    offsets = pa.py_buffer((np.arange(n + 1, dtype=np.int64) * 64).astype(np.int32).tobytes())
    return pa.StringArray.from_buffers(n, offsets, pa.py_buffer(chars.tobytes()))


def _void(d: np.ndarray) -> np.ndarray:
    """(n, 32) uint8 -> n comparable, sortable scalars (byte-string order = hex order)."""
    return np.ascontiguousarray(d).view(np.dtype((np.void, 32))).ravel()


def _lookup(sorted_keys: np.ndarray, hex_keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Position of each hex key in `sorted_keys` (void digests), -1 when absent."""
    q = _void(digests_of(hex_to_digest(pc.fill_null(_combined(hex_keys).cast(pa.string()), ""))))
    if not len(sorted_keys):
        return np.full(len(q), -1, dtype=np.int64)
    pos = np.searchsorted(sorted_keys, q).clip(0, len(sorted_keys) - 1)
    return np.where(sorted_keys[pos] == q, pos, -1)


class KeySet:
    """A set of generation keys held as sorted 32-byte digests; members are hex strings."""

    def __init__(self, digests: pa.Array | pa.ChunkedArray | np.ndarray) -> None:
        d = digests if isinstance(digests, np.ndarray) else digests_of(digests)
        self._keys = np.unique(_void(d))

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(self.isin(pa.array([key], pa.string()))[0])

    def __iter__(self) -> Iterator[str]:
        return iter(self.hex().to_pylist())

    def __sub__(self, other: Iterable[str]) -> set[str]:
        drop = other if isinstance(other, (set, frozenset)) else set(other)
        return {k for k in self if k not in drop}

    def isin(self, hex_keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Vectorised membership of hex keys (null: not a member)."""
        return _lookup(self._keys, hex_keys) >= 0

    def hex(self) -> pa.Array:
        return digest_to_hex(digest_array(self._keys.tobytes(), len(self._keys)))


class KeyMap(KeySet):
    """Generation key -> the batch that provides its rows, held as digests + batch codes."""

    def __init__(self, digests: pa.Array | pa.ChunkedArray, batches: pa.Array | pa.ChunkedArray) -> None:
        d = _void(digests_of(digests))
        order = np.argsort(d, kind="stable")
        b = _combined(batches)
        enc = b if pa.types.is_dictionary(b.type) else b.cast(pa.string()).dictionary_encode()
        self._keys = d[order]
        self._codes = np.asarray(enc.indices.to_numpy(zero_copy_only=False))[order].astype(np.int32)
        self._names = enc.dictionary.cast(pa.string())

    def get(self, key: str, default: str | None = None) -> str | None:
        b = self.batch_of(pa.array([key], pa.string()))[0].as_py()
        return default if b is None else b

    def __getitem__(self, key: str) -> str:
        b = self.get(key)
        if b is None:
            raise KeyError(key)
        return b

    def batch_of(self, hex_keys: pa.Array | pa.ChunkedArray) -> pa.Array:
        """The batch of each hex key, null when the key is not reused."""
        pos = _lookup(self._keys, hex_keys)
        codes = pa.array(np.where(pos >= 0, self._codes[pos.clip(0)] if len(self._codes) else 0, 0), pa.int32())
        names = self._names if len(self._names) else pa.array([None], pa.string())
        return pc.if_else(pa.array(pos >= 0), names.take(codes), pa.nulls(len(pos), pa.string()))

    def items(self) -> Iterator[tuple[str, str]]:
        return zip(self.hex().to_pylist(), self._names.take(pa.array(self._codes)).to_pylist(), strict=True)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, KeyMap):
            return dict(self.items()) == dict(other.items())
        if isinstance(other, dict):
            return dict(self.items()) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]
