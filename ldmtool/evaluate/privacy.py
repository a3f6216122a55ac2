"""Privacy: how close synthetic volumes come to training volumes.

* max SSIM: for each synthetic volume the highest 3D SSIM to any training volume (intensities
  scaled to [0, 1] per volume); averaged over q random samples, repeated (Salmè et al.);
* memorisation ratio: nearest-neighbour distances in feature space, synthetic→train against
  held-out real→train (below 1: synthetic volumes sit closer to training data than unseen real
  data does);
* `MemorizationFilter`: the same max-SSIM score for one generated volume at a time, to reject
  near-copies before they are written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ldmtool.errors import LdmError
from ldmtool.evaluate.nnsearch import CANDIDATES


def ssim_window(shape: tuple[int, ...], largest: int = 11) -> int:
    """The SSIM window: 11 voxels, or the largest odd size that fits the smallest dimension (of
    those larger than one: a 2D image (I, J, 1) gets the window of its plane)."""
    from ldmtool.evaluate.nnsearch import in_plane

    w = min(largest, min(in_plane(shape)))
    return max(1, w if w % 2 else w - 1)


@torch.inference_mode()
def ssim_batch(
    a: np.ndarray, b: np.ndarray, device: torch.device | None = None, win_size: int | None = None
) -> np.ndarray:
    """3D SSIM of pairs (a[n], b[n]) of (I, J, K) volumes in [0, 1] (MONAI's SSIMMetric) → (N,);
    2D SSIM for 2D images (I, J, 1)."""
    from monai.metrics import SSIMMetric

    device = device or torch.device("cpu")
    win = win_size or ssim_window(a.shape[1:])
    ta = torch.as_tensor(np.asarray(a, dtype=np.float32))[:, None].to(device)
    tb = torch.as_tensor(np.asarray(b, dtype=np.float32))[:, None].to(device)
    dims = 3
    if ta.shape[-1] == 1 and min(ta.shape[2:4]) > 1:
        ta, tb, dims = ta[..., 0], tb[..., 0], 2
    metric = SSIMMetric(spatial_dims=dims, data_range=1.0, win_size=win, reduction="none")
    return metric(ta, tb).reshape(-1).double().cpu().numpy()


class OneToManySSIM:
    """3D SSIM of one volume against every volume of a reference set, as MONAI's SSIMMetric
    defines it (Gaussian window of σ 1.5, k1 0.01, k2 0.03, data range 1, valid filtering) but
    computed the way one-to-many needs: the Gaussian applied as three 1D shift-and-add passes
    (`nnsearch.gaussian_filter_valid`) instead of one 3D kernel, and each reference volume's local
    means and variances filtered once, not once per pair. Same values up to float rounding (tests
    compare it with SSIMMetric).
    """

    def __init__(self, reference: np.ndarray, win: int, device: torch.device | None = None, batch: int = 16) -> None:
        from ldmtool.evaluate.nnsearch import gaussian_taps, ssim_stats

        self.device = device or torch.device("cpu")
        self.taps = gaussian_taps(win)
        ref = torch.as_tensor(np.asarray(reference, dtype=np.float32))
        self.stats = [ssim_stats(ref[i : i + batch], self.taps, self.device) for i in range(0, len(ref), batch)]

    @torch.inference_mode()
    def __call__(self, query: np.ndarray) -> np.ndarray:
        """SSIM of `query` (I, J, K) in [0, 1] with each reference volume → (R,)."""
        from ldmtool.evaluate.nnsearch import ssim_batch_stats, ssim_stats

        q = ssim_stats(np.asarray(query, dtype=np.float32)[None], self.taps, self.device)
        return np.concatenate([ssim_batch_stats(q, s, self.taps) for s in self.stats])


def max_ssim_to_set(
    queries: np.ndarray,
    reference: np.ndarray,
    device: torch.device | None = None,
    batch: int = 16,
    on_query=None,
    candidates: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query volume the highest 3D SSIM to any reference volume, and which one.

    `candidates`: None searches exhaustively; k uses the two-stage `nnsearch.SSIMIndex` (exact
    SSIM on the k best candidates of the coarse stage).

    Returns (max_ssim (Q,), argmax index into reference (Q,))."""
    if candidates is not None:
        from ldmtool.evaluate.nnsearch import SSIMIndex

        index = SSIMIndex.from_volumes(reference, ssim_window(reference.shape[1:]), device=device, k=candidates)
        descriptors = np.stack([index.descriptor(v) for v in queries])
        return index.search_all(queries.__getitem__, descriptors, on_query)
    ssim = OneToManySSIM(reference, ssim_window(reference.shape[1:]), device, batch)
    best = np.full(len(queries), -np.inf)
    where = np.zeros(len(queries), dtype=np.int64)
    for q, vol in enumerate(queries):
        s = ssim(vol)
        where[q] = int(np.argmax(s))
        best[q] = s[where[q]]
        if on_query is not None:
            on_query()
    return best, where


def repeated_mean(values: np.ndarray, q: int, repeats: int, seed: int = 0) -> tuple[float, float, int]:
    """Mean of `values` over `repeats` random draws of q items without replacement (q capped at
    the number available): (mean over repeats, std over repeats, q used)."""
    q_used = min(q, len(values))
    rng = np.random.default_rng(seed)
    means = [float(values[rng.choice(len(values), q_used, replace=False)].mean()) for _ in range(repeats)]
    return float(np.mean(means)), float(np.std(means)), q_used


def nn_distances(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Euclidean distance of each query feature vector to its nearest reference vector."""
    d = torch.cdist(torch.from_numpy(np.asarray(queries)).double(), torch.from_numpy(np.asarray(reference)).double())
    return d.min(dim=1).values.numpy()


def memorisation(syn_emb: np.ndarray, train_emb: np.ndarray, heldout_emb: np.ndarray | None) -> dict:
    """Nearest-neighbour distances synthetic→train vs held-out real→train in feature space."""
    d_syn = nn_distances(syn_emb, train_emb)
    out = {
        "syn_to_train_median": float(np.median(d_syn)),
        "syn_to_train_quartiles": [float(x) for x in np.percentile(d_syn, [25, 50, 75])],
    }
    if heldout_emb is None or len(heldout_emb) == 0:
        out["ratio"] = None
        out["note"] = "no held-out real volumes (give --test or a --real set distinct from --train)"
        return out
    d_real = nn_distances(heldout_emb, train_emb)
    p5 = float(np.percentile(d_real, 5))
    out.update(
        {
            "heldout_to_train_median": float(np.median(d_real)),
            "heldout_to_train_quartiles": [float(x) for x in np.percentile(d_real, [25, 50, 75])],
            # < 1: synthetic samples are closer to the training set than unseen real volumes are
            "ratio": float(np.median(d_syn) / max(np.median(d_real), 1e-12)),
            "share_closer_than_heldout_p5": float((d_syn < p5).mean()),
        }
    )
    return out


@dataclass
class MemorizationCheck:
    score: float  # highest SSIM to any training volume
    nearest: str  # case id of that training volume
    reject: bool  # score > threshold


class MemorizationFilter:
    """Reject generated volumes that are near-copies of training volumes.

    The score is the report's privacy score: the highest 3D SSIM (MONAI's SSIMMetric definition,
    window `ssim_window(train shape)`) between the volume and a training volume, each scaled to
    [0, 1] between its 0.5 and 99.5 intensity percentiles; volumes of another shape are resized to
    the training shape first. The search is two-stage (`nnsearch.SSIMIndex`, built once per
    filter): exact SSIM on the `candidates` training volumes ranked best by a coarse SSIM. Volumes
    of several channels (contrasts) are compared on their first channel: a near-copy of a
    training case, decoded from one latent, copies all of its channels.

    Args:
        train: a data set folder (nnU-Net layout or a folder of volumes) or an array (N, I, J, K)
            of training images in their original intensities.
        threshold: reject when the score exceeds it (e.g. 0.95).
        device: where SSIM runs.
        candidates: training volumes re-ranked by exact SSIM per check (None: every one).
        cache_bytes: memory for training volumes and their filtered moments. A folder is read
            once to index it; its volumes are read again only as candidates, when not cached.
    """

    def __init__(
        self,
        train,
        threshold: float = 0.95,
        device: torch.device | str | None = None,
        case_ids: list[str] | None = None,
        candidates: int | None = CANDIDATES,
        cache_bytes: int = 4 * 1024**3,
    ) -> None:
        from ldmtool.evaluate.nnsearch import SSIMIndex, coarse_factor, volume_descriptor
        from ldmtool.evaluate.volumes import normalise01, open_volume_set

        if not 0.0 < float(threshold) <= 1.0:
            raise LdmError(f"the memorisation threshold must be in (0, 1]; got {threshold}")
        self.threshold = float(threshold)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if isinstance(train, (str, Path)):
            vs = open_volume_set(Path(train), "train", channel=0)
            self.shape, self.case_ids, load = vs.shape, vs.case_ids, vs.volume
            factor = coarse_factor(self.shape)
            desc = np.stack([volume_descriptor(img, factor) for _, img, _ in vs.iter_volumes()])
        else:
            arr = np.asarray(train, dtype=np.float32)
            if arr.ndim != 4 or len(arr) == 0:
                raise LdmError(f"training volumes must be an array (N, I, J, K); got shape {arr.shape}")
            volumes = np.stack([normalise01(v) for v in arr])
            self.shape, load = volumes.shape[1:], volumes.__getitem__
            self.case_ids = case_ids or [f"train_{i}" for i in range(len(arr))]
            factor = coarse_factor(self.shape)
            desc = np.stack([volume_descriptor(v, factor) for v in volumes])
        self.checked = 0
        self.rejected = 0
        exhaustive = candidates is None
        self.index = SSIMIndex(
            desc,
            load,
            ssim_window(self.shape),
            factor,
            self.device,
            k=len(desc) if exhaustive else int(candidates),
            margin=None if exhaustive else 0.05,
            cache_bytes=cache_bytes,
        )

    def score(self, image: np.ndarray) -> tuple[float, int]:
        """(highest SSIM to a training volume, index of that volume) for one (I, J, K) image (of
        (I, J, K, C): its first channel)."""
        from ldmtool.evaluate.volumes import normalise01, resize_volume

        image = np.asarray(image, dtype=np.float32)
        if image.ndim == 4:
            image = image[..., 0]
        if image.ndim != 3:
            raise LdmError(f"a generated image must be a 3D array; got shape {image.shape}")
        vol = resize_volume(normalise01(image), self.shape)
        return self.index.search(vol)

    def check(self, image: np.ndarray) -> MemorizationCheck:
        """Score one volume, count it, and say whether to reject it."""
        s, j = self.score(image)
        reject = s > self.threshold
        self.checked += 1
        self.rejected += int(reject)
        return MemorizationCheck(score=s, nearest=self.case_ids[j], reject=reject)

    def summary(self) -> dict:
        """What to record in provenance: threshold, volumes checked, volumes rejected."""
        return {"reject_memorized_threshold": self.threshold, "checked": self.checked, "rejected": self.rejected}
