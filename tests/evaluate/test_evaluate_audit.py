"""Memorisation audit: contrastive copy detection and membership inference, known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldmtool.evaluate import audit
from ldmtool.evaluate.nnsearch import volume_descriptor
from ldmtool.evaluate.volumes import normalise01


def test_copy_audit_finds_copies_and_not_fresh_volumes(make_phantoms):
    train = np.stack([volume_descriptor(normalise01(v), 1) for v in make_phantoms(12, seed=60)[0]])
    held = np.stack([volume_descriptor(normalise01(v), 1) for v in make_phantoms(6, seed=61)[0]])
    fresh = np.stack([volume_descriptor(normalise01(v), 1) for v in make_phantoms(6, seed=62)[0]])
    rng = np.random.default_rng(0)
    copies = np.clip(train[[1, 4, 4, 9]] + rng.normal(scale=0.005, size=train[[1, 4, 4, 9]].shape), 0, 1)
    enc = audit.train_encoder(train, steps=30, batch=12)
    emb = lambda x: audit.embed(enc, x)  # noqa: E731
    res = audit.copy_audit(emb(np.concatenate([copies, fresh])), emb(train), emb(held))
    assert res["copy_index"][:4] == [0, 1, 2, 3] and res["copied_index"][:3] == [1, 4, 9]
    assert res["copies"] <= 5  # at most one fresh phantom by chance
    assert res["training_share_copied"] == pytest.approx(len(res["copied_index"]) / 12)


def test_membership_auc_known_answers():
    assert audit.membership_auc(np.array([0.1, 0.2]), np.array([0.5, 0.6, 0.7])) == 1.0
    assert audit.membership_auc(np.array([0.9]), np.array([0.5])) == 0.0
    assert audit.membership_auc(np.array([0.5, 0.5]), np.array([0.5])) == 0.5


def test_denoiser_loss_of_a_zero_predictor_is_the_target_power():
    from types import SimpleNamespace

    from ldmtool.config import DenoiserConfig

    cfg = DenoiserConfig(channels=(8, 16), norm_num_groups=4, num_head_channels=8, objective="eps")
    pipe = SimpleNamespace(
        ldm_config=SimpleNamespace(model=cfg),
        device=torch.device("cpu"),
        encode=lambda image: image[None],
        ldm=lambda zt, t, a, m: torch.zeros_like(zt),
    )
    loss = audit.denoiser_loss(pipe, torch.rand(8, 16, 16), timesteps=4)
    assert loss == pytest.approx(1.0, abs=0.05)  # E[noise²] for an ε target


def test_audit_grid_bounds_the_encoder_input_whatever_the_search_grid():
    from ldmtool.evaluate.audit import AUDIT_SMALLEST, audit_grid

    big = np.random.default_rng(0).random((3, 40, 48, 40)).astype(np.float32)
    x = audit_grid(big)
    assert tuple(x.shape) == (3, 1, AUDIT_SMALLEST, 29, AUDIT_SMALLEST)
    assert float(x.mean()) == pytest.approx(float(big.mean()), abs=1e-3)
    small = big[:, :20, :22, :18]
    assert tuple(audit_grid(small).shape) == (3, 1, 20, 22, 18)
