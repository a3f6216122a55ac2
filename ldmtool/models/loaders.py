"""Checkpoint → ready model: rebuild each network from the (typed, checked) config stored with its weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ldmtool.config import AutoencoderConfig, DenoiserConfig, from_dict
from ldmtool.errors import LdmError
from ldmtool.models.autoencoder import SliceAutoencoder
from ldmtool.models.checkpoint import load_checkpoint, resolve_checkpoint
from ldmtool.models.checkpoint_config import (
    AutoencoderCheckpoint,
    LatentDiffusionCheckpoint,
    SegmenterCheckpoint,
)
from ldmtool.models.denoiser import LatentDenoiser
from ldmtool.models.ldseg import build_segmenter


def load_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Put a checkpoint's tensors into the network its config describes; weights that do not fit it
    (missing, unexpected or of another shape: an edited or mixed-up file) are a one-line error."""
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), "weights do not fit the model")
        raise LdmError(
            f"{path}: its weights do not fit the model its config describes ({detail[:160]}); "
            "the checkpoint is damaged or was edited by hand"
        ) from None


def build_autoencoder(config: AutoencoderCheckpoint | dict[str, Any]) -> SliceAutoencoder:
    """Rebuild the autoencoder described by a checkpoint config."""
    if isinstance(config, AutoencoderCheckpoint):
        return SliceAutoencoder(config.model, image_channels=1, num_classes=config.num_classes)
    cfg = from_dict(AutoencoderConfig, config["model"])
    return SliceAutoencoder(cfg, image_channels=1, num_classes=int(config["num_classes"]))


def load_autoencoder(path: Path, device: torch.device) -> tuple[SliceAutoencoder, AutoencoderCheckpoint]:
    """Load an autoencoder checkpoint (weights + checked config) onto `device`, in eval mode."""
    path = resolve_checkpoint(path)
    tensors, raw = load_checkpoint(path, kind="autoencoder")
    config = AutoencoderCheckpoint.from_dict(raw, source=str(path))
    ae = build_autoencoder(config)
    load_weights(ae, tensors, path)
    return ae.to(device).eval(), config


def build_denoiser(config: LatentDiffusionCheckpoint | dict[str, Any]) -> LatentDenoiser:
    """Rebuild the latent denoiser described by a checkpoint config."""
    if isinstance(config, LatentDiffusionCheckpoint):
        return LatentDenoiser(config.model, config.latent_shape[0], len(config.attributes), config.label_channels)
    cfg = from_dict(DenoiserConfig, config["model"])
    cond = config.get("conditioning", {})
    n_attr = len(cond.get("attributes", []))
    return LatentDenoiser(cfg, int(config["latent_shape"][0]), n_attr, int(cond.get("label_channels", 0)))


def load_denoiser(path: Path, device: torch.device) -> tuple[LatentDenoiser, LatentDiffusionCheckpoint]:
    """Load a latent-denoiser checkpoint (EMA weights + checked config) onto `device`, in eval mode."""
    path = resolve_checkpoint(path)
    tensors, raw = load_checkpoint(path, kind="latent-diffusion")
    config = LatentDiffusionCheckpoint.from_dict(raw, source=str(path))
    model = build_denoiser(config)
    load_weights(model, tensors, path)
    return model.to(device).eval(), config


def load_segmenter(path: Path, device: torch.device) -> tuple[torch.nn.Module, SegmenterCheckpoint]:
    """A segmenter checkpoint (weights + checked config) on `device`, in eval mode."""
    path = resolve_checkpoint(path)
    tensors, raw = load_checkpoint(path, kind="segmenter")
    config = SegmenterCheckpoint.from_dict(raw, source=str(path))
    model = build_segmenter(config.model, config.num_classes)
    load_weights(model, tensors, path)
    return model.to(device).eval(), config
