"""Checkpoint → ready model: rebuild each network from the (typed, checked) config stored with its weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ldmtool.config import AutoencoderConfig, DenoiserConfig, from_dict
from ldmtool.models.autoencoder import SliceAutoencoder
from ldmtool.models.checkpoint import load_checkpoint, resolve_checkpoint
from ldmtool.models.checkpoint_config import (
    AutoencoderCheckpoint,
    LatentDiffusionCheckpoint,
    SegmenterCheckpoint,
)
from ldmtool.models.denoiser import LatentDenoiser
from ldmtool.models.ldseg import build_segmenter


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
    ae.load_state_dict(tensors)
    return ae.to(device).eval(), config


def build_denoiser(config: LatentDiffusionCheckpoint | dict[str, Any]) -> LatentDenoiser:
    """Rebuild the latent denoiser described by a checkpoint config."""
    if isinstance(config, LatentDiffusionCheckpoint):
        return LatentDenoiser(config.model, config.latent_shape[0], len(config.attributes))
    cfg = from_dict(DenoiserConfig, config["model"])
    n_attr = len(config.get("conditioning", {}).get("attributes", []))
    return LatentDenoiser(cfg, int(config["latent_shape"][0]), n_attr)


def load_denoiser(path: Path, device: torch.device) -> tuple[LatentDenoiser, LatentDiffusionCheckpoint]:
    """Load a latent-denoiser checkpoint (EMA weights + checked config) onto `device`, in eval mode."""
    path = resolve_checkpoint(path)
    tensors, raw = load_checkpoint(path, kind="latent-diffusion")
    config = LatentDiffusionCheckpoint.from_dict(raw, source=str(path))
    model = build_denoiser(config)
    model.load_state_dict(tensors)
    return model.to(device).eval(), config


def load_segmenter(path: Path, device: torch.device) -> tuple[torch.nn.Module, SegmenterCheckpoint]:
    """A segmenter checkpoint (weights + checked config) on `device`, in eval mode."""
    path = resolve_checkpoint(path)
    tensors, raw = load_checkpoint(path, kind="segmenter")
    config = SegmenterCheckpoint.from_dict(raw, source=str(path))
    model = build_segmenter(config.model, config.num_classes)
    model.load_state_dict(tensors)
    return model.to(device).eval(), config
