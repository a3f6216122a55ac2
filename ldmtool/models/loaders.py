"""Checkpoint → ready model: rebuild each network from the config stored with its weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ldmtool.config import AutoencoderConfig, DenoiserConfig, SegModelConfig, from_dict
from ldmtool.models.autoencoder import SliceAutoencoder
from ldmtool.models.checkpoint import load_checkpoint
from ldmtool.models.denoiser import LatentDenoiser
from ldmtool.models.ldseg import build_segmenter


def build_autoencoder(config: dict[str, Any]) -> SliceAutoencoder:
    """Rebuild the autoencoder described by a checkpoint config."""
    cfg = from_dict(AutoencoderConfig, config["model"])
    return SliceAutoencoder(cfg, image_channels=1, num_classes=int(config["num_classes"]))


def load_autoencoder(path: Path, device: torch.device) -> tuple[SliceAutoencoder, dict[str, Any]]:
    """Load an autoencoder checkpoint (weights + config) onto `device`, in eval mode."""
    tensors, config = load_checkpoint(path, kind="autoencoder")
    ae = build_autoencoder(config)
    ae.load_state_dict(tensors)
    return ae.to(device).eval(), config


def build_denoiser(config: dict[str, Any]) -> LatentDenoiser:
    cfg = from_dict(DenoiserConfig, config["model"])
    n_attr = len(config.get("conditioning", {}).get("attributes", []))
    return LatentDenoiser(cfg, int(config["latent_shape"][0]), n_attr)


def load_denoiser(path: Path, device: torch.device) -> tuple[LatentDenoiser, dict[str, Any]]:
    """Load a latent-denoiser checkpoint (EMA weights + config) onto `device`, in eval mode."""
    tensors, config = load_checkpoint(path, kind="latent-diffusion")
    model = build_denoiser(config)
    model.load_state_dict(tensors)
    return model.to(device).eval(), config


def load_segmenter(path: Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A segmenter checkpoint (weights + config) on `device`, in eval mode."""
    tensors, config = load_checkpoint(path, kind="segmenter")
    cfg = from_dict(SegModelConfig, config["model"])
    model = build_segmenter(cfg, int(config["num_classes"]))
    model.load_state_dict(tensors)
    return model.to(device).eval(), config
