"""Slice autoencoder training: lesion oversampling, validation metrics, a tiny end-to-end fit."""

import json
import warnings

import numpy as np
import pytest
import torch
from rich.console import Console

from ldmtool.config import AELossConfig, AETrainConfig
from ldmtool.models.autoencoder import SliceAutoencoder
from ldmtool.models.checkpoint import load_checkpoint
from ldmtool.models.loaders import load_autoencoder
from ldmtool.train.autoencoder import AELoss, SliceSampler, train_autoencoder, validate_autoencoder

QUIET = Console(quiet=True)


def _rare_slices(data):
    has = (data.labels == data.num_classes - 1).flatten(2).any(2)  # (N, D)
    return {(int(c), int(s)) for c, s in torch.nonzero(has)}


@pytest.mark.parametrize("fraction,batch", [(0.5, 8), (0.25, 8), (0.75, 4)])
def test_slice_sampler_lesion_share(phantom_data, fraction, batch):
    rare = _rare_slices(phantom_data)
    assert rare, "the phantoms must hold lesion slices"
    n, d = phantom_data.images.shape[:2]
    sampler = SliceSampler(phantom_data, batch, fraction, seed=0)
    n_rare = round(batch * fraction)
    assert len(sampler) == n * d // batch
    batches = list(sampler)
    assert len(batches) == len(sampler)
    plain_seen = []
    for cases, slices in batches:
        assert cases.shape == slices.shape == (batch,)
        assert int(cases.max()) < n and int(slices.max()) < d and int(cases.min()) >= 0
        pairs = list(zip(cases.tolist(), slices.tolist()))
        assert all(p in rare for p in pairs[batch - n_rare :])  # the oversampled part is all lesion slices
        plain_seen += pairs[: batch - n_rare]
    assert len(set(plain_seen)) == len(plain_seen)  # the plain part is a permutation without repeats
    # lesion slices make up at least the requested share of everything drawn
    drawn = sum(len(c) for c, _ in batches)
    in_rare = sum(sum((c, s) in rare for c, s in zip(cs.tolist(), ss.tolist())) for cs, ss in batches)
    assert in_rare / drawn >= fraction - 1e-9


def test_slice_sampler_without_oversampling(phantom_data):
    sampler = SliceSampler(phantom_data, 16, 0.0, seed=0)
    idx = [(c, s) for cs, ss in sampler for c, s in zip(cs.tolist(), ss.tolist())]
    n, d = phantom_data.images.shape[:2]
    assert len(idx) == n * d and len(set(idx)) == n * d  # one epoch = every slice once
    again = [(c, s) for cs, ss in SliceSampler(phantom_data, 16, 0.0, seed=0) for c, s in zip(cs.tolist(), ss.tolist())]
    assert idx == again


def test_validate_autoencoder_keys(phantom_data, ae_config):
    torch.manual_seed(0)
    ae = SliceAutoencoder(ae_config(), num_classes=phantom_data.num_classes).eval()
    metrics = validate_autoencoder(ae, phantom_data.subset([0, 1]), AELoss(AELossConfig(), 3), batch=7)
    assert {"val_loss", "psnr", "ssim", "dice_head", "dice_lesion"} <= set(metrics)
    assert all(isinstance(v, float) or (k.startswith("dice_") and v is None) for k, v in metrics.items())
    assert np.isfinite(metrics["val_loss"]) and metrics["val_loss"] > 0
    assert np.isfinite(metrics["psnr"]) and -1 <= metrics["ssim"] <= 1
    assert 0 <= metrics["dice_head"] <= 1


def test_ae_loss_parts():
    loss_fn = AELoss(AELossConfig(kl_weight=0.5, ssim_weight=0.1), num_classes=3)
    img = torch.rand(2, 1, 16, 16)
    label = torch.randint(0, 3, (2, 16, 16))
    logits = torch.randn(2, 3, 16, 16)
    mu, sigma = torch.zeros(2, 4, 8, 8), torch.ones(2, 4, 8, 8)
    total, parts = loss_fn(img, logits, img, label, mu, sigma)
    assert set(parts) == {"l1", "label", "ssim", "kl"}
    assert parts["l1"] == 0.0 and parts["kl"] == pytest.approx(0.0, abs=1e-5)  # perfect image, prior posterior
    assert parts["ssim"] == pytest.approx(0.0, abs=1e-4)
    assert float(total) == pytest.approx(sum(parts.values()), rel=1e-5)
    _, parts2 = loss_fn(img, logits, img, label, mu + 1.0, sigma)
    assert parts2["kl"] == pytest.approx(0.5 * 0.5 * 4 * 8 * 8, rel=1e-4)  # 0.5 mu^2 per element


def _train(data, out, ae_config, seed=0, epochs=3, steps=None, loss_cfg=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return train_autoencoder(
            data,
            out,
            model_cfg=ae_config(),
            loss_cfg=loss_cfg or AELossConfig(),
            train_cfg=AETrainConfig(
                epochs=epochs, steps=steps, batch_size=8, warmup_steps=2, lr=1e-3, val_fraction=0.25
            ),
            preprocess={"orientation": "RAS"},
            device=torch.device("cpu"),
            seed=seed,
            console=QUIET,
            **kw,
        )


@pytest.mark.parametrize("seed", [0, 1])
def test_train_autoencoder_tiny(tmp_path, phantom_data, ae_config, seed):
    out = tmp_path / "ae"
    result = _train(phantom_data, out, ae_config, seed=seed)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "history.json",
        "last.safetensors",
        "model.safetensors",
        "state.json",
        "train_state.safetensors",
    ]
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert [h["val_loss"] for h in history] == [h["val_loss"] for h in result.history]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert history[-1]["train_l1"] < history[0]["train_l1"]
    assert result.path == out / "model.safetensors"
    assert result.best["val_loss"] == min(h["val_loss"] for h in history)

    _, best_cfg = load_checkpoint(out / "model.safetensors", kind="autoencoder")
    _, last_cfg = load_checkpoint(out / "last.safetensors", kind="autoencoder")
    assert last_cfg["metrics"]["epoch"] == 3
    assert best_cfg["metrics"]["val_loss"] == result.best["val_loss"]
    assert best_cfg["metrics"]["epoch"] == result.best["epoch"]
    on_disk = json.loads((out / "config.json").read_text())
    assert json.dumps(on_disk, sort_keys=True) == json.dumps(best_cfg, sort_keys=True)  # (NaN-safe equality)
    assert best_cfg["num_classes"] == 3 and best_cfg["label_names"] == phantom_data.label_names
    assert best_cfg["volume_shape"] == [32, 32, 16] and best_cfg["slice_shape"] == [32, 32] and best_cfg["depth"] == 16
    assert np.allclose(best_cfg["reference_affine"], phantom_data.affines[0])
    assert sorted(best_cfg["train_cases"] + best_cfg["val_cases"]) == phantom_data.case_ids
    assert len(best_cfg["val_cases"]) == 1 and best_cfg["seed"] == seed
    assert best_cfg["preprocess"] == {"orientation": "RAS"} and best_cfg["model"]["channels"] == [8, 16]

    ae, cfg = load_autoencoder(out, torch.device("cpu"))
    assert not ae.training and cfg["metrics"]["epoch"] == best_cfg["metrics"]["epoch"]
    assert result.parameters == sum(p.numel() for p in ae.parameters())


def test_train_autoencoder_reproducible(tmp_path, make_prepared, ae_config):
    data = make_prepared(n=3)
    a = _train(data, tmp_path / "a", ae_config, seed=5, epochs=1)
    b = _train(data, tmp_path / "b", ae_config, seed=5, epochs=1)
    ta, _ = load_checkpoint(tmp_path / "a")
    tb, _ = load_checkpoint(tmp_path / "b")
    assert set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert a.history[0]["train_l1"] == b.history[0]["train_l1"]


def _train_adv(data, out, ae_config, *, steps, **kw):
    loss_cfg = AELossConfig(adversarial_weight=0.1, adversarial_start=2)
    return _train(data, out, ae_config, seed=3, steps=steps, loss_cfg=loss_cfg, **kw)


def test_adversarial_term_trains_a_discriminator_and_resumes_to_identical_weights(tmp_path, make_prepared, ae_config):
    from ldmtool.errors import Preempted
    from ldmtool.train.state import load_state

    data = make_prepared(n=3)
    whole = _train_adv(data, tmp_path / "whole", ae_config, steps=6)
    row = whole.history[-1]
    assert row["train_adv"] > 0 and row["train_disc"] > 0  # both terms ran (from step 2 on)
    state = load_state(tmp_path / "whole")
    assert any(k.startswith("conv") or "." in k for k in state.tensors["discriminator"])
    assert state.tensors["optimizer_discriminator"]  # the discriminator's Adam moments are kept
    weights, _ = load_checkpoint(tmp_path / "whole" / "model.safetensors")
    assert not any("discriminator" in k for k in weights)  # checkpoints hold the autoencoder alone

    class StopAt:  # a stop request that arrives during step 4
        signal_name = "SIGTERM"

        def __init__(self):
            self.calls = 0

        @property
        def requested(self):
            self.calls += 1
            return self.calls >= 4

    with pytest.raises(Preempted):
        _train_adv(data, tmp_path / "cut", ae_config, steps=6, stop=StopAt())
    assert load_state(tmp_path / "cut").step == 4
    _train_adv(data, tmp_path / "cut", ae_config, steps=6, resume="must")
    a, b = load_state(tmp_path / "whole").tensors, load_state(tmp_path / "cut").tensors
    for part in ("model", "discriminator", "optimizer", "optimizer_discriminator"):
        assert set(a[part]) == set(b[part]), part
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_adversarial_settings_are_checked():
    from ldmtool.errors import LdmError

    with pytest.raises(LdmError, match="adversarial_weight"):
        AELossConfig(adversarial_weight=-1)
    with pytest.raises(LdmError, match="adversarial_start"):
        AELossConfig(adversarial_start=-5)
