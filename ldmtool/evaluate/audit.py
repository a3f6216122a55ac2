"""Memorisation audit: copies found in a contrastive embedding, and membership inference.

* Copy detection (Dar et al., "Investigating data memorization in 3D latent diffusion models for
  medical image synthesis"): a small 3D encoder is trained self-supervised (SimCLR's NT-Xent on
  two augmented views of each training volume: shifts, flips, intensity scale and noise) on the
  training set's coarse volumes (`nnsearch.volume_descriptor`). A synthetic volume is a copy when
  its nearest training volume in that embedding is closer than the nearest training volume of
  every held-out real volume; reported: the share of synthetic copies and the share of training
  cases that have a copy.
* Membership inference on the generator: the denoising loss of the latent denoiser (fixed noise
  and timesteps) on training and on held-out cases; the AUC of "lower loss = member" (0.5: the
  generator does not tell them apart; 1: it remembers its training cases).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class CoarseEncoder(torch.nn.Module):
    """A small 3D CNN: coarse volume (B, 1, i, j, k) → unit-norm embedding (B, dim)."""

    def __init__(self, dim: int = 64, width: int = 16) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv3d(1, width, 3, padding=1),
            torch.nn.GroupNorm(4, width),
            torch.nn.SiLU(),
            torch.nn.Conv3d(width, 2 * width, 3, stride=2, padding=1),
            torch.nn.GroupNorm(4, 2 * width),
            torch.nn.SiLU(),
            torch.nn.Conv3d(2 * width, 4 * width, 3, stride=2, padding=1),
            torch.nn.GroupNorm(4, 4 * width),
            torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool3d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(32 * width, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random view of a batch (B, 1, i, j, k): shift ≤ 2 voxels, left-right flip, intensity, noise."""
    b = x.shape[0]
    out = []
    for v in x:
        shifts = [int(s) for s in torch.randint(-2, 3, (3,), generator=g)]
        v = torch.roll(v, shifts, dims=(1, 2, 3))
        if torch.rand(1, generator=g) < 0.5:
            v = v.flip(1)
        out.append(v)
    x = torch.stack(out)
    scale = 1 + 0.1 * (torch.rand(b, 1, 1, 1, 1, generator=g) - 0.5)
    return x * scale + 0.02 * torch.randn(x.shape, generator=g)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's contrastive loss: each view's partner is its positive, the 2B − 2 others negatives."""
    z = torch.cat([z1, z2])
    sim = z @ z.T / temperature
    sim.fill_diagonal_(-1e9)
    n = len(z1)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


AUDIT_SMALLEST = 24  # voxels on the shortest axis of the encoder's input
AUDIT_BATCH = 32  # training volumes per contrastive step (the cost stops growing with the set beyond it)


def audit_grid(coarse: np.ndarray) -> torch.Tensor:
    """Coarse volumes (N, i, j, k) → the encoder's input (N, 1, ...): average-pooled so the shortest
    axis has at most `AUDIT_SMALLEST` voxels (aspect kept), whatever grid the privacy search used."""
    x = torch.as_tensor(np.asarray(coarse, dtype=np.float32))[:, None]
    scale = AUDIT_SMALLEST / min(x.shape[2:])
    if scale >= 1:
        return x
    size = tuple(max(1, round(s * scale)) for s in x.shape[2:])
    return F.adaptive_avg_pool3d(x, size)


def train_encoder(train: np.ndarray, steps: int = 200, batch: int = AUDIT_BATCH, seed: int = 0) -> CoarseEncoder:
    """Train the contrastive encoder on coarse training volumes (N, i, j, k) (CPU-sized)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = audit_grid(train)
    enc = CoarseEncoder()
    opt = torch.optim.AdamW(enc.parameters(), lr=1e-3)
    for _ in range(steps):
        idx = torch.randperm(len(x), generator=g)[: min(batch, len(x))]
        loss = nt_xent(enc(augment(x[idx], g)), enc(augment(x[idx], g)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return enc.eval()


@torch.inference_mode()
def embed(enc: CoarseEncoder, coarse: np.ndarray, batch: int = 64) -> np.ndarray:
    x = audit_grid(coarse)
    return torch.cat([enc(x[i : i + batch]) for i in range(0, len(x), batch)]).numpy()


def copy_audit(syn: np.ndarray, train: np.ndarray, heldout: np.ndarray) -> dict:
    """Copies: synthetic embeddings closer to their nearest training embedding than every held-out one.

    Args: unit-norm embeddings (N, dim) of synthetic, training and held-out real volumes."""
    d_syn = torch.cdist(torch.as_tensor(syn), torch.as_tensor(train))
    d_held = torch.cdist(torch.as_tensor(heldout), torch.as_tensor(train)).min(1).values
    nearest, where = d_syn.min(1)
    threshold = float(d_held.min())
    copies = (nearest < threshold).numpy()
    copied = sorted({int(j) for j in where[torch.as_tensor(copies)]})
    return {
        "threshold": threshold,
        "copies": int(copies.sum()),
        "copy_share": float(copies.mean()),
        "training_cases_copied": len(copied),
        "training_share_copied": len(copied) / len(train),
        "copy_index": [int(i) for i in np.flatnonzero(copies)],
        "copied_index": copied,
    }


def membership_auc(member_loss: np.ndarray, nonmember_loss: np.ndarray) -> float:
    """AUC of telling members (training cases) by a lower loss (Mann–Whitney, ties count ½)."""
    m, n = np.asarray(member_loss, float), np.asarray(nonmember_loss, float)
    if len(m) == 0 or len(n) == 0:
        return float("nan")
    less = (m[:, None] < n[None, :]).sum() + 0.5 * (m[:, None] == n[None, :]).sum()
    return float(less / (len(m) * len(n)))


@torch.inference_mode()
def denoiser_loss(pipe, image: torch.Tensor, timesteps: int = 10, seed: int = 0) -> float:
    """Mean denoising loss of the generator's latent denoiser on one volume in model space (D, H, W)
    at `timesteps` evenly spaced times, with noise fixed by `seed` (the same for every case)."""
    from ldmtool.diffusion.samplers import training_scheduler

    dcfg = pipe.ldm_config.model
    sched = training_scheduler(dcfg)
    z0 = pipe.encode(image.to(pipe.device))[None]
    g = torch.Generator().manual_seed(seed)
    ts = torch.linspace(0, dcfg.num_train_timesteps - 1, timesteps).long()
    losses = []
    for t in ts:
        noise = torch.randn(z0.shape, generator=g).to(z0.device)
        tt = t[None].to(z0.device)
        zt = sched.add_noise(z0, noise, tt)
        if dcfg.objective == "flow":
            target = z0 - noise
        elif dcfg.objective == "eps":
            target = noise
        else:
            target = sched.get_velocity(z0, noise, tt)
        pred = pipe.ldm(zt, tt, None, None)
        losses.append(float((pred.float() - target).pow(2).mean()))
    return float(np.mean(losses))


def membership_inference(pipe, train_dir, heldout_dir, max_cases: int | None = 50, timesteps: int = 10) -> dict:
    """Denoising losses of the generator on training and held-out cases, and the membership AUC.

    Args:
        pipe: a `LatentDiffusionPipeline` (the generator under audit).
        train_dir, heldout_dir: data set folders; each case is brought into the models' space as
            `impute` does (the autoencoder's recorded preprocessing)."""
    from ldmtool.io import load_dataset
    from ldmtool.pipelines.impute import to_model_space

    def losses(folder) -> np.ndarray:
        ds = load_dataset(folder)
        out = []
        for case in ds.cases[:max_cases] if max_cases else ds.cases:
            vol, _ = ds.read(case)
            image, _, _, _ = to_model_space(vol, np.zeros(np.asarray(vol.array).shape, bool), pipe.ae_config)
            out.append(denoiser_loss(pipe, torch.as_tensor(np.asarray(image)).float(), timesteps))
        return np.asarray(out)

    member, nonmember = losses(train_dir), losses(heldout_dir)
    return {
        "auc": membership_auc(member, nonmember),
        "train_loss_mean": float(member.mean()),
        "heldout_loss_mean": float(nonmember.mean()),
        "train_cases": len(member),
        "heldout_cases": len(nonmember),
        "timesteps": timesteps,
        "definition": "AUC of telling training cases from held-out ones by a lower denoising loss of the "
        "latent denoiser (fixed noise, evenly spaced timesteps); 0.5 = no membership signal",
    }
