"""The slice-by-slice latent pipeline: volume ↔ latent volume, one slice batch at a time.

Memory is set by one batch of slices, never by the depth of the volume.
"""

from __future__ import annotations

import torch

from ldmtool.models.autoencoder import SliceAutoencoder
from ldmtool.models.position import slice_positions
from ldmtool.runtime import class_index


@torch.inference_mode()
def encode_volume(
    ae: SliceAutoencoder,
    image: torch.Tensor,
    label: torch.Tensor | None,
    batch: int = 64,
    observed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Encode one volume to its latent volume using the posterior mean (not a sample).

    Args:
        image: (D, H, W) normalised image, slice axis first; (D, C, H, W) with several channels
            (all channels of a slice are encoded together).
        label: (D, H, W) integer label map, or None.
        observed: 1 = known voxel, the shape of `image` (or (D, H, W) for all channels), for
            incomplete volumes (None: complete).
    Returns:
        (L, D, h, w) latent volume.
    """
    device = next(ae.parameters()).device
    depth = image.shape[0]
    pos = slice_positions(depth, device)
    image = image[:, None] if image.ndim == 3 else image  # one channel: (D, 1, H, W)
    if observed is not None and observed.ndim == 3:
        observed = observed[:, None]
    out = []
    for s in range(0, depth, batch):
        img = image[s : s + batch].to(device, torch.float32)
        lab = None if label is None else label[s : s + batch].to(device)
        obs = None if observed is None else observed[s : s + batch].to(device, torch.float32)
        z_mu, _ = ae.encode(ae.make_input(img, lab, obs), pos[s : s + batch])
        out.append(z_mu)
    return torch.cat(out).transpose(0, 1).contiguous()  # (D, L, h, w) → (L, D, h, w)


@torch.inference_mode()
def decode_latents(
    ae: SliceAutoencoder, z: torch.Tensor, batch: int = 64, labels_only: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode latent volumes slice by slice.

    Only one batch of slices is decoded at a time, and its activations are freed before the next,
    so the decoder's memory does not grow with depth; what grows is the output arrays alone.

    Args:
        z: (B, L, D, h, w) latent volumes (in the autoencoder's own latent units).
        batch: slices decoded at once (bounds activation memory).
        labels_only: return the label map (B, D, H, W) uint8 (argmax) instead of probabilities;
            a K-th of the memory.
    Returns:
        image (B, D, H, W) — (B, D, C, H, W) for a model of several channels — and label
        probabilities (B, K, D, H, W) — or the label map — or None; both on the CPU.
    """
    device = next(ae.parameters()).device
    b, _, depth = z.shape[:3]
    pos = slice_positions(depth, device)
    flat = z.transpose(1, 2).reshape(b * depth, *z.shape[1:2], *z.shape[3:])  # (B·D, L, h, w)
    pos = pos.repeat(b)
    images, labels = [], []
    for s in range(0, flat.shape[0], batch):
        out = ae.decode(flat[s : s + batch].to(device, torch.float32), pos[s : s + batch])
        img, logits = ae.split(out.float())
        images.append(ae.squeeze(img).cpu())
        if logits is not None:
            labels.append(
                class_index(logits, 1).to(torch.uint8).cpu() if labels_only else torch.softmax(logits, dim=1).cpu()
            )
        del out, img, logits
    image = torch.cat(images).reshape(b, depth, *images[0].shape[1:])
    if not labels:
        return image, None
    lab = torch.cat(labels)
    if labels_only:
        return image, lab.reshape(b, depth, *lab.shape[1:])
    lab = lab.reshape(b, depth, lab.shape[1], *lab.shape[2:]).transpose(1, 2)
    return image, lab


def latent_renderer(ae: SliceAutoencoder, mean: torch.Tensor, std: torch.Tensor, depth: int):
    """render(piece, index) for `guidance.observed_error`: standardised latent slices
    (B, L, d, h, w) at slice range index[2] → decoded images (B, d, H, W) (several channels:
    (B, d, C, H, W)), differentiably."""
    device = next(ae.parameters()).device
    positions = slice_positions(depth, device)

    def render(piece: torch.Tensor, index: tuple[slice, ...]) -> torch.Tensor:
        b, c, d, h, w = piece.shape
        z = piece * std + mean
        flat = z.transpose(1, 2).reshape(b * d, c, h, w)
        span = index[2] if len(index) > 2 else slice(None)
        pos = positions[span].repeat(b)
        image, _ = ae.split(ae.decode(flat, pos).float())
        image = ae.squeeze(image)
        return image.reshape(b, d, *image.shape[1:])

    return render
