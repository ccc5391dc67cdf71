"""Host-side tables of the core's rotation and codebook, in numpy (no GPU needed).

Everything here follows the definitions in ``rust/turboquant/src/rotation.rs`` (layouts, rounds,
SplitMix64 signs, Fisher-Yates permutations), ``rng.rs`` and ``cells.rs``, so the CUDA kernels
rotate and encode exactly as the CPU core does. A numpy reference of the rotation is included
for tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_MASK = (1 << 64) - 1
#: Rounds for small blocks (``rotation.rs`` ``ROUNDS``).
ROUNDS = 3
#: Blocks at least this large need ``LARGE_BLOCK_ROUNDS`` rounds.
LARGE_BLOCK = 256
#: Rounds for large blocks and the tiled layout.
LARGE_BLOCK_ROUNDS = 2
#: The tiled layout needs block size over block count at least this large.
MIN_TILE_SPREAD = 40
#: Layout codes shared with the CUDA sources (``TQ_LAYOUT``).
SINGLE, TILED, OVERLAPPING = 0, 1, 2
#: Cells of the uniform cell index (``cells.rs`` ``CELLS``).
CELLS = 32
#: Least distance of a boundary from a cell edge, in cell widths (``cells.rs`` ``MARGIN``).
MARGIN = 1e-3


class SplitMix64:
    """The core's SplitMix64 generator (``rng.rs``), seeded with ``(seed, stream)``."""

    def __init__(self, seed: int, stream: int):
        self.state = (seed ^ ((stream * 0xD1B54A32D192ED03) & _MASK)) & _MASK
        self.next_u64()

    def next_u64(self) -> int:
        """The next 64 random bits."""
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def signs(self, n: int) -> np.ndarray:
        """``n`` signs (+1 / -1 as float32), one bit each, least significant bit first."""
        words = [self.next_u64() for _ in range((n + 63) // 64)]
        bits = np.array([(w >> b) & 1 for w in words for b in range(64)][:n], dtype=np.int8)
        return np.where(bits == 1, -1.0, 1.0).astype(np.float32)


def _permutation(n: int, rng: SplitMix64) -> np.ndarray:
    p = list(range(n))
    for i in range(n - 1, 0, -1):
        j = (rng.next_u64() * (i + 1)) >> 64
        p[i], p[j] = p[j], p[i]
    return np.array(p, dtype=np.int32)


def layout_for_dim(dim: int) -> tuple[int, int]:
    """``(layout, block)`` of the rotation of ``R^dim`` (``BlockLayout::for_dim``)."""
    if dim <= 0:
        raise ValueError("dim must be positive")
    tile = dim & -dim
    count = dim // tile
    if count == 1:
        return SINGLE, dim
    if count >= 3 and tile >= MIN_TILE_SPREAD * count:
        return TILED, tile
    return OVERLAPPING, 1 << (dim.bit_length() - 1)


@dataclass(frozen=True)
class RotationTables:
    """The rotation of ``R^dim`` for one seed: its layout and seeded tables."""

    dim: int
    layout: int
    block: int
    rounds: int
    #: First round with a permutation (``rounds`` when none has one).
    first_perm: int
    #: ``rounds × dim`` signs (float32, ±1), round-major.
    signs: np.ndarray
    #: ``(rounds − first_perm) × dim`` gather indices (int32), round-major.
    perms: np.ndarray
    #: ``1/√block`` as float32, the Hadamard normalisation.
    scale: np.float32

    def sign_bits(self, lanes: int) -> np.ndarray:
        """Signs as bit masks for the register kernels: ``rounds × lanes`` uint32 words; word
        ``(r, l)`` bit ``k`` is set when coordinate ``l·(dim/lanes) + k`` of round ``r`` flips."""
        e = self.dim // lanes
        if e > 32 or self.dim % lanes:
            raise ValueError("sign bits need dim/lanes ≤ 32")
        neg = (self.signs.reshape(self.rounds, lanes, e) < 0).astype(np.uint64)
        w = (neg << np.arange(e, dtype=np.uint64)).sum(axis=2)
        return w.astype(np.uint32)


@lru_cache(maxsize=64)
def rotation_tables(dim: int, seed: int, stream: int = 0) -> RotationTables:
    """The tables of the core's rotation of ``R^dim`` (``Rotation::new(dim, seed, stream)``)."""
    layout, block = layout_for_dim(dim)
    rounds = LARGE_BLOCK_ROUNDS if (block >= LARGE_BLOCK or layout == TILED) else ROUNDS
    signs = np.concatenate([SplitMix64(seed, stream * 16 + r).signs(dim) for r in range(rounds)])
    first = {SINGLE: rounds, TILED: 1, OVERLAPPING: 0}[layout]
    perms = [_permutation(dim, SplitMix64(seed, stream * 16 + 8 + r)) for r in range(first, rounds)]
    perm_arr = np.concatenate(perms) if perms else np.zeros(0, dtype=np.int32)
    scale = np.float32(1.0) / np.sqrt(np.float32(block))
    return RotationTables(dim, layout, block, rounds, first, signs, perm_arr, np.float32(scale))


def _fwht(x: np.ndarray, scale: np.float32) -> None:
    """In-place Sylvester-order Walsh-Hadamard transform over the last axis (float32), stages
    in increasing span, scaled at the end (``kernels::fwht_scaled``)."""
    n = x.shape[-1]
    h = 1
    while h < n:
        v = x.reshape(*x.shape[:-1], n // (2 * h), 2, h)
        a = v[..., 0, :].copy()
        b = v[..., 1, :].copy()
        v[..., 0, :] = a + b
        v[..., 1, :] = a - b
        h *= 2
    if scale != np.float32(1.0):
        x *= scale


def rotate_reference(t: RotationTables, x: np.ndarray, inverse: bool = False) -> np.ndarray:
    """Numpy float32 reference of ``R x`` (or ``Rᵀ x``) over the rows of ``x``."""
    x = np.array(x, dtype=np.float32, copy=True).reshape(-1, t.dim)
    d, p = t.dim, t.block

    def perm(r: int) -> np.ndarray | None:
        if r < t.first_perm:
            return None
        k = r - t.first_perm
        return t.perms[k * d : (k + 1) * d]

    rounds = range(t.rounds - 1, -1, -1) if inverse else range(t.rounds)
    for r in rounds:
        s = t.signs[r * d : (r + 1) * d]
        pr = perm(r)
        if t.layout == OVERLAPPING:
            assert pr is not None
            if not inverse:
                x *= s
                head = x[:, :p].copy()
                _fwht(head, t.scale)
                x[:, :p] = head
                x = x[:, pr].copy()
                tail = x[:, d - p :].copy()
                _fwht(tail, t.scale)
                x[:, d - p :] = tail
            else:
                tail = x[:, d - p :].copy()
                _fwht(tail, t.scale)
                x[:, d - p :] = tail
                y = np.empty_like(x)
                y[:, pr] = x
                x = y
                head = x[:, :p].copy()
                _fwht(head, t.scale)
                x[:, :p] = head
                x *= s
        else:
            if not inverse:
                if pr is not None:
                    x = x[:, pr].copy()
                x *= s
                blocks = x.reshape(-1, d // p, p)
                _fwht(blocks, t.scale)
                x = blocks.reshape(-1, d)
            else:
                blocks = x.reshape(-1, d // p, p).copy()
                _fwht(blocks, t.scale)
                x = blocks.reshape(-1, d)
                x *= s
                if pr is not None:
                    y = np.empty_like(x)
                    y[:, pr] = x
                    x = y
    return x


@dataclass(frozen=True)
class CellTable:
    """A uniform cell index over a codebook's boundaries (``cells.rs``): the code of ``y`` is
    ``below[g] + (inside[g] < y)`` with ``g = clamp(⌊y·inv_width + offset⌋, 0, 31)``."""

    offset: np.float32
    inv_width: np.float32
    below: np.ndarray
    inside: np.ndarray


def _cell_layout(b: np.ndarray, origin: float, width: float) -> CellTable | None:
    inv_w = np.float32(1.0 / width)
    off = np.float32(-origin / width)
    below = np.zeros(CELLS, dtype=np.int32)
    inside = np.full(CELLS, np.inf, dtype=np.float32)
    count = np.zeros(CELLS, dtype=np.int32)
    for t in b.astype(np.float64):
        u = t * float(inv_w) + float(off)
        if not (1.0 <= u < CELLS - 1) or abs(u - round(u)) < MARGIN:
            return None
        g = int(np.floor(u))
        count[g] += 1
        inside[g] = np.float32(t)
    if (count > 1).any():
        return None
    seen = 0
    for g in range(CELLS):
        below[g] = seen
        seen += int(count[g])
    return CellTable(off, inv_w, below, inside)


@lru_cache(maxsize=64)
def cell_table(boundaries: tuple[float, ...]) -> CellTable | None:
    """A cell table for sorted float32 ``boundaries`` (at most 16), or None if none fits."""
    b = np.array(boundaries, dtype=np.float32)
    n = len(b)
    if n == 0 or n > 16 or (np.diff(b) <= 0).any():
        return None
    lo, hi = float(b[0]), float(b[-1])
    for interior in range(CELLS - 2, max(n, 2) - 1, -1):
        width = 1.0 if n == 1 else (hi - lo) / (interior - 1)
        for step in range(1, 20):
            t = _cell_layout(b, lo - width * (1.0 + step / 20.0), width)
            if t is not None:
                return t
    return None


def encode_reference(y: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """Codes of unit-scale coordinates: the number of boundaries strictly below each value."""
    return np.searchsorted(boundaries.astype(np.float32), y.astype(np.float32), side="left").astype(np.uint8)
