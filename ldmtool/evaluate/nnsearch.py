"""Nearest training volume by 3D SSIM in two stages, so privacy scales to real studies.

1. An index of training volumes in a small descriptor space (each volume average-pooled to a
   coarse grid, centred and scaled to unit norm): plain torch top-k gives k candidates per query.
2. Exact 3D SSIM (MONAI's SSIMMetric definition: Gaussian window σ 1.5, k1 0.01, k2 0.03, data
   range 1, valid filtering) between the query and those candidates only. The Gaussian is
   applied as three 1D shift-and-add passes, and each volume's local mean and variance are
   filtered once and kept in a memory-bounded cache, so a pair costs one filtered product.

The recall of the true nearest neighbour (exhaustive SSIM over every training volume) is
measured on a sample of queries by `recall_vs_exhaustive` and reported beside the scores.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ldmtool.runtime import release_memory

C1, C2 = 0.01**2, 0.03**2
COARSE_WIN = 5  # SSIM window of the coarse stage
# At most this many coarse candidates per query get the exact SSIM (the margin usually keeps
# fewer). Among brains alike to a query (no copy), the true nearest one can rank below the
# coarse top 8 (evaluate_scale-20261202-054659-aa0c84c11.md: 2 of 3 found with 8)
CANDIDATES = 16
SLAB_VOXELS = 1 << 20  # CPU: voxels of one slab filtered at a time (`_slabs`; 4 MB of float32)
RECALL_CHUNK_BYTES = 1024**3  # memory for the moments of the recall queries checked in one pass


def gaussian_taps(win: int, sigma: float = 1.5) -> list[float]:
    """The normalised 1D Gaussian window of MONAI's SSIM."""
    x = np.arange(win, dtype=np.float64) - (win - 1) / 2
    g = np.exp(-((x / sigma) ** 2) / 2)
    return [float(v) for v in g / g.sum()]


def in_plane(shape: Sequence[int]) -> list[int]:
    """The axes' sizes that carry an image: all but singleton axes (the one slice of a 2D image,
    (I, J, 1)), so 2D images get 2D SSIM and pooling rather than a window of one voxel."""
    sizes = [int(s) for s in shape if int(s) > 1]
    return sizes or [1]


def pool_kernel(shape: Sequence[int], factor: int) -> tuple[int, ...]:
    """A 3D pooling kernel of `factor` on every axis but singleton ones (see `in_plane`)."""
    return tuple(factor if int(s) > 1 else 1 for s in shape)


def _slabs(x: torch.Tensor, halo: int) -> list[tuple[int, int]]:
    """Ranges of output planes along axis -3 filtered together: about `SLAB_VOXELS` at a time on
    a CPU (a slab's 33 shift-and-add passes then stay in the processor's caches instead of
    streaming the whole volume from memory once per tap; `benchmarks/evaluate_scale.py
    --kernels` times both), the whole axis at once on a GPU. Every output
    voxel is computed by the same operations either way."""
    n = x.shape[-3] - halo
    per_plane = max(1, x[..., :1, :, :].numel())
    planes = n if x.device.type != "cpu" else max(1, SLAB_VOXELS // per_plane)
    return [(lo, min(n, lo + planes)) for lo in range(0, n, max(planes, 1))]


def gaussian_filter_valid(x: torch.Tensor, taps: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian over the last three axes, valid region only (as MONAI's conv3d); a
    singleton axis (2D images as (I, J, 1)) is left as it is, as MONAI's 2D SSIM would.

    Shift-and-add: one multiply-add of a shifted view per tap and axis, an order of magnitude
    faster on a CPU than conv3d with a (w, 1, 1) kernel."""
    w = len(taps)
    for axis in (-3, -2, -1):
        if x.shape[axis] == 1:
            continue
        n = x.shape[axis] - w + 1
        acc = x.narrow(axis, 0, n) * taps[0]
        for t in range(1, w):
            acc.add_(x.narrow(axis, t, n), alpha=taps[t])
        x = acc
    return x


@dataclass
class SSIMStats:
    """A volume (I, J, K) in [0, 1] with its Gaussian-filtered local mean and variance (valid region)."""

    vol: torch.Tensor
    mu: torch.Tensor
    var: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for t in (self.vol, self.mu, self.var))


def _halo(x: torch.Tensor, taps: Sequence[float]) -> int:
    """Planes along axis -3 that valid filtering removes (none on a singleton axis)."""
    return len(taps) - 1 if x.shape[-3] > 1 else 0


def ssim_stats(volume: np.ndarray | torch.Tensor, taps: Sequence[float], device: torch.device) -> SSIMStats:
    """Filter a volume's local moments once (slab by slab, see `_slabs`)."""
    v = torch.as_tensor(np.ascontiguousarray(volume, dtype=np.float32)).to(device)
    halo = _halo(v, taps)
    mus, variances = [], []
    for lo, hi in _slabs(v, halo):
        x = v.narrow(-3, lo, hi - lo + halo)
        mu = gaussian_filter_valid(x, taps)
        variances.append(gaussian_filter_valid(x * x, taps).sub_(mu * mu))
        mus.append(mu)
    return SSIMStats(v, torch.cat(mus, -3), torch.cat(variances, -3))


def _ssim_sum(a: SSIMStats, b: SSIMStats, taps: Sequence[float]) -> torch.Tensor:
    """Sum of the SSIM map of a and b over the last three axes (float64; leading axes broadcast,
    so one query (1, I, J, K) against references (B, I, J, K) gives (B,)), slab by slab
    (`_slabs`): one filtered product per pair from the cached moments."""
    halo = _halo(a.vol, taps)
    total = torch.zeros((), dtype=torch.float64, device=a.vol.device)
    for lo, hi in _slabs(a.vol if a.vol.dim() >= b.vol.dim() else b.vol, halo):
        n = hi - lo
        mu_a, mu_b = a.mu.narrow(-3, lo, n), b.mu.narrow(-3, lo, n)
        prod = a.vol.narrow(-3, lo, n + halo) * b.vol.narrow(-3, lo, n + halo)
        cov = gaussian_filter_valid(prod, taps).sub_(mu_a * mu_b)
        num = (2 * mu_a * mu_b + C1).mul_(cov.mul_(2).add_(C2))
        den = (mu_a * mu_a + mu_b * mu_b + C1).mul_(a.var.narrow(-3, lo, n) + b.var.narrow(-3, lo, n) + C2)
        total = total + num.div_(den).sum(dim=(-3, -2, -1), dtype=torch.float64)
    return total


def ssim_pair(a: SSIMStats, b: SSIMStats, taps: Sequence[float]) -> float:
    """Mean SSIM of two volumes from their cached moments."""
    return float(_ssim_sum(a, b, taps)) / max(a.mu.numel(), 1)


def coarse_factor(shape: Sequence[int]) -> int:
    """The average-pooling factor of the coarse stage: every axis kept ≥ 40 voxels (so the coarse
    SSIM ranks neighbours closely enough that a small margin keeps the true nearest one), but
    at least 2 where an axis of ≥ 24 voxels allows it. Singleton axes (2D images) do not count."""
    m = min(in_plane(shape))
    return max(1, min(2, m // 24), m // 40)


@torch.inference_mode()
def volume_descriptor(volume: np.ndarray, factor: int) -> np.ndarray:
    """The coarse-stage descriptor of a volume: average-pooled by `factor` per axis but singleton
    ones (float32)."""
    t = torch.as_tensor(np.asarray(volume, dtype=np.float32))[None, None]
    if factor > 1:
        t = torch.nn.functional.avg_pool3d(t, pool_kernel(t.shape[2:], factor))
    return t[0, 0].numpy()  # (I/f, J/f, K/f)


class SSIMIndex:
    """Two-stage nearest training volume by 3D SSIM (see the module docstring).

    Stage 1 scores every training volume by SSIM of the volumes average-pooled by `factor`
    (batched, their moments filtered once); stage 2 re-ranks the best k by exact SSIM.

    Args:
        descriptors: (N, i, j, k) coarse training volumes (`descriptor`).
        load: index → training volume (I, J, K) in [0, 1]; called only for candidates (and on
            cache misses), so the volumes may stay on disk.
        win: SSIM window of the full-size volumes (`privacy.ssim_window(shape)`).
        factor: the pooling factor that made the descriptors.
        k: at most this many candidates re-ranked by exact SSIM per query (k ≥ N: exhaustive).
        margin: only candidates whose coarse SSIM is within `margin` of the best coarse SSIM are
            re-ranked (None: always k); a near-copy stands far above the rest and costs one pair.
        cache_bytes: memory for the training volumes' filtered moments (least recently used go).
    """

    def __init__(
        self,
        descriptors: np.ndarray,
        load: Callable[[int], np.ndarray],
        win: int,
        factor: int,
        device: torch.device | None = None,
        k: int = CANDIDATES,
        margin: float | None = 0.05,
        cache_bytes: int = 2 * 1024**3,
    ) -> None:
        self.device = device or torch.device("cpu")
        self.factor, self.load, self.taps, self.k = int(factor), load, gaussian_taps(win), int(k)
        self.margin = margin
        coarse = torch.as_tensor(np.asarray(descriptors, dtype=np.float32))
        self.coarse_taps = gaussian_taps(max(1, min(COARSE_WIN, _odd(min(in_plane(coarse.shape[1:]))))))
        self.coarse = [ssim_stats(coarse[i : i + 64], self.coarse_taps, self.device) for i in range(0, len(coarse), 64)]
        self.n = len(coarse)
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[int, SSIMStats] = OrderedDict()
        self.pairs = 0  # exact SSIM pairs computed

    @classmethod
    def from_volumes(cls, volumes: np.ndarray, win: int, **kw) -> SSIMIndex:
        """An index over training volumes held in memory (N, I, J, K)."""
        factor = kw.pop("factor", None) or coarse_factor(volumes.shape[1:])
        desc = np.stack([volume_descriptor(v, factor) for v in volumes])
        return cls(desc, lambda j: volumes[j], win, factor, **kw)

    def descriptor(self, volume: np.ndarray) -> np.ndarray:
        """The coarse descriptor of a query volume, as the index's were made."""
        return volume_descriptor(volume, self.factor)

    def __len__(self) -> int:
        return self.n

    @torch.inference_mode()
    def coarse_ssim(self, descriptor: np.ndarray) -> np.ndarray:
        """Stage 1: SSIM of the coarse query to every coarse training volume → (N,)."""
        q = ssim_stats(descriptor[None], self.coarse_taps, self.device)
        return np.concatenate([ssim_batch_stats(q, s, self.coarse_taps) for s in self.coarse])

    def candidates(self, descriptor: np.ndarray, k: int | None = None) -> np.ndarray:
        """Indices of the (at most k) training volumes with the highest coarse SSIM, best first."""
        k = min(self.k if k is None else int(k), len(self))
        coarse = self.coarse_ssim(descriptor)
        order = np.argsort(-coarse, kind="stable")[:k]
        if self.margin is None:
            return order
        return order[coarse[order] >= coarse[order[0]] - self.margin]

    def _stats(self, j: int) -> SSIMStats:
        if j in self._cache:
            self._cache.move_to_end(j)
            return self._cache[j]
        s = ssim_stats(self.load(j), self.taps, self.device)
        self._cache[j] = s
        while len(self._cache) > 1 and sum(v.nbytes for v in self._cache.values()) > self.cache_bytes:
            self._cache.popitem(last=False)
        return s

    @torch.inference_mode()
    def ssim_to(self, volume: np.ndarray, indices: Sequence[int]) -> np.ndarray:
        """Exact SSIM of one query volume (I, J, K) in [0, 1] to the given training volumes."""
        q = ssim_stats(volume, self.taps, self.device)
        out = np.array([ssim_pair(q, self._stats(int(j)), self.taps) for j in indices], dtype=np.float64)
        self.pairs += len(out)
        return out

    def search(self, volume: np.ndarray, descriptor: np.ndarray | None = None) -> tuple[float, int]:
        """(highest exact SSIM among the candidates, index of that training volume)."""
        return self._best_of(volume, self.candidates(self.descriptor(volume) if descriptor is None else descriptor))

    def _best_of(self, volume: np.ndarray, cand: np.ndarray) -> tuple[float, int]:
        """The exact stage: (highest SSIM among the candidates, index of that training volume)."""
        s = self.ssim_to(volume, cand)
        best = int(np.argmax(s))
        return float(s[best]), int(cand[best])

    def search_all(
        self,
        load: Callable[[int], np.ndarray],
        descriptors: np.ndarray,
        on_query: Callable[[], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`search` for every query of a set (`load(i)` → volume i, `descriptors[i]` its coarse
        descriptor): the coarse stage first for all, then the exact stage in `locality_order`, so
        queries that need the same training volumes come one after another and find them in the
        cache. A training set larger than the cache otherwise costs a read and a filtering of
        training volumes for most exact pairs. Returns (max SSIM (Q,), training index (Q,))."""
        cands = [self.candidates(descriptors[i]) for i in range(len(descriptors))]
        best, where = np.zeros(len(cands)), np.zeros(len(cands), dtype=np.int64)
        for i in locality_order(cands, self.cache_capacity()):
            best[i], where[i] = self._best_of(load(i), cands[i])
            release_memory()  # the query's volume and moments (see ldmtool.runtime.release_memory)
            if on_query is not None:
                on_query()
        return best, where

    def cache_capacity(self) -> int:
        """How many training volumes' moments the cache holds (from the size of one)."""
        if self._cache:
            one = next(iter(self._cache.values())).nbytes
        else:
            full = [n * self.factor if n > 1 else 1 for n in (self.coarse[0].vol.shape[1:] if self.coarse else (1,))]
            valid = [n - len(self.taps) + 1 if n > 1 else 1 for n in full]  # mean and variance: valid region
            one = 4 * (int(np.prod(full)) + 2 * int(np.prod([max(v, 1) for v in valid])))
        return max(1, self.cache_bytes // max(one, 1))

    def exhaustive(self, volume: np.ndarray) -> tuple[float, int]:
        """(highest SSIM to any training volume, its index): every pair, for checking recall."""
        return self.exhaustive_many([volume])[0]

    @torch.inference_mode()
    def exhaustive_many(self, volumes: Sequence[np.ndarray]) -> list[tuple[float, int]]:
        """`exhaustive` for several queries in one pass over the training set: each training
        volume's moments are filtered (or taken from the cache) once for all the queries, where a
        query-by-query scan of a set larger than the cache would read every volume once per query.
        The volumes already cached come first, so they are used before the scan evicts them."""
        if len(self) == 0 or not len(volumes):
            return [(float("-inf"), -1) for _ in volumes]
        qs = [ssim_stats(v, self.taps, self.device) for v in volumes]
        cached = [j for j in reversed(self._cache) if j < self.n]  # most recently used first
        order = cached + sorted(set(range(self.n)) - set(cached))
        scores = np.empty((len(qs), self.n))
        for j in order:
            ref = self._stats(j)
            scores[:, j] = [ssim_pair(q, ref, self.taps) for q in qs]
        self.pairs += scores.size
        where = scores.argmax(1)  # the lowest index among ties, as a plain argmax over the row
        best = scores[np.arange(len(qs)), where]
        return [(float(b), int(w)) for b, w in zip(best, where)]


def locality_order(candidates: Sequence[Sequence[int]], capacity: int) -> list[int]:
    """An order of the queries that keeps the training volumes they need in an LRU cache of
    `capacity` volumes: greedily, the next query is the one with most of its candidates cached
    (ties: lowest index), else the lowest remaining one. Neighbouring queries in feature space
    share candidates, so this reads each training volume a few times instead of once per pair."""
    needs: dict[int, set[int]] = {}
    for q, cand in enumerate(candidates):
        for j in cand:
            needs.setdefault(int(j), set()).add(q)
    left = set(range(len(candidates)))
    cache: OrderedDict[int, None] = OrderedDict()
    order = []
    while left:
        pool = set().union(*(needs.get(j, set()) for j in cache)) & left
        if pool:
            q = min(pool, key=lambda i: (-sum(int(j) in cache for j in candidates[i]), i))
        else:
            q = min(left)
        left.discard(q)
        order.append(q)
        for j in candidates[q]:
            j = int(j)
            needs[j].discard(q)
            cache[j] = None
            cache.move_to_end(j)
            while len(cache) > capacity:
                cache.popitem(last=False)
    return order


def _odd(n: int) -> int:
    return n if n % 2 else n - 1


def ssim_batch_stats(q: SSIMStats, refs: SSIMStats, taps: Sequence[float]) -> np.ndarray:
    """Mean SSIM of one query (1, I, J, K) against a batch of references (B, I, J, K) → (B,)."""
    return (_ssim_sum(refs, q, taps) / max(refs.mu[0].numel(), 1)).cpu().numpy()


def recall_vs_exhaustive(
    index: SSIMIndex,
    load_query: Callable[[int], np.ndarray],
    found: np.ndarray,
    found_ssim: np.ndarray,
    n_check: int,
    seed: int = 0,
) -> dict:
    """Share of sampled queries whose two-stage nearest training volume is the exhaustive one.

    A different index with the same SSIM (to 1e-6, a tie) counts as found.

    Args:
        load_query: query index → volume in [0, 1].
        found, found_ssim: the two-stage argmax and max SSIM of every query.
        n_check: queries checked exhaustively (capped at the number of queries)."""
    n = min(int(n_check), len(found))
    if n == 0 or len(index) == 0:
        return {"checked": 0, "recall": None}
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(found), n, replace=False))
    hits, gaps = 0, []
    first = load_query(int(picks[0]))
    per_query = 3 * 4 * int(np.asarray(first).size)  # float32 volume, local mean and variance
    size = max(1, RECALL_CHUNK_BYTES // per_query)  # queries per pass over the training set
    for start in range(0, n, size):
        chunk = picks[start : start + size]
        vols = [first if start + k == 0 else load_query(int(i)) for k, i in enumerate(chunk)]
        for i, (s, j) in zip(chunk, index.exhaustive_many(vols)):
            hit = j == int(found[i]) or abs(s - float(found_ssim[i])) <= 1e-6
            hits += int(hit)
            gaps.append(s - float(found_ssim[i]))
    return {
        "checked": n,
        "recall": hits / n,
        "max_ssim_shortfall": float(max(gaps)),
        "candidates_per_query": min(index.k, len(index)),
        "definition": "share of randomly chosen queries whose nearest training volume by exact 3D SSIM "
        "(exhaustive search) is among the re-ranked candidates",
    }
