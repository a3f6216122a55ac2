"""Latent diffusion training: checkpoint contents, conditioning statistics, the latents cache."""

import json
import warnings

import numpy as np
import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

import ldmtool.train.latent as latent_mod
from ldmtool.config import LDMTrainConfig, to_dict
from ldmtool.data.lesions import ATTRIBUTES
from ldmtool.data.prepared import slices_to_volume
from ldmtool.diffusion.pipeline import encode_volume
from ldmtool.models.autoencoder import SliceAutoencoder
from ldmtool.models.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from ldmtool.models.loaders import load_denoiser
from ldmtool.train.latent import dataset_attributes, train_latent_diffusion

QUIET = Console(quiet=True)
CPU = torch.device("cpu")


def _make_ae(folder, data, ae_config, seed):
    torch.manual_seed(seed)
    ae = SliceAutoencoder(ae_config(), num_classes=data.num_classes).eval()
    config = {
        "kind": "autoencoder",
        "model": to_dict(ae_config()),
        "num_classes": data.num_classes,
        "label_names": data.label_names,
        "volume_shape": list(data.volume_shape),
        "reference_affine": np.asarray(data.affines[0]).tolist(),
        "preprocess": {},
    }
    path = save_checkpoint(folder / "model.safetensors", ae.state_dict(), config)
    return ae, config, path


@pytest.fixture(scope="module")
def ae_setup(tmp_path_factory, phantom_data, ae_config):
    return _make_ae(tmp_path_factory.mktemp("ae"), phantom_data, ae_config, 0)


def _train(data, ae_setup, out, denoiser_config, condition_on="lesion", steps=3):
    ae, ae_cfg, ae_path = ae_setup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return train_latent_diffusion(
            data,
            ae,
            ae_cfg,
            ae_path,
            out,
            model_cfg=denoiser_config(condition_on=condition_on),
            train_cfg=LDMTrainConfig(steps=steps, batch_size=2, warmup_steps=1, lr=1e-3, val_fraction=0.25),
            device=CPU,
            seed=0,
            console=QUIET,
        )


@pytest.fixture(scope="module")
def conditioned_run(tmp_path_factory, phantom_data, ae_setup, denoiser_config):
    out = tmp_path_factory.mktemp("ldm")
    return out, _train(phantom_data, ae_setup, out, denoiser_config)


def test_conditioned_checkpoint_contents(conditioned_run, ae_setup, phantom_data):
    out, result = conditioned_run
    _, _, ae_path = ae_setup
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "history.json",
        "latents.safetensors",
        "model.safetensors",
        "state.json",
        "train_state.safetensors",
    ]
    assert result.path == out / "model.safetensors"
    tensors, cfg = load_checkpoint(out, kind="latent-diffusion")
    assert cfg["latent_shape"] == [4, 16, 16, 16] and result.summary["latent_shape"] == (4, 16, 16, 16)
    assert len(cfg["latent_mean"]) == len(cfg["latent_std"]) == 4
    assert all(s > 0 for s in cfg["latent_std"])
    assert cfg["autoencoder_sha256"] == file_sha256(ae_path)
    assert cfg["step"] == 3 and cfg["model"]["condition_on"] == "lesion"
    cond = cfg["conditioning"]
    assert cond["attributes"] == list(ATTRIBUTES) and len(cond["attributes"]) == 5
    assert len(cond["mean"]) == len(cond["std"]) == 5 and cond["lesion_class"] == 2
    raw = dataset_attributes(phantom_data)
    np.testing.assert_allclose(cond["mean"], raw.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cond["train_range"][1], raw.max(0), rtol=1e-5)
    assert cfg["volume_shape"] == [32, 32, 16] and cfg["label_names"] == phantom_data.label_names
    assert len(cfg["train_cases"]) == 3
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["step"] == 3 and "val_loss" in history[-1] and np.isfinite(history[-1]["train_loss"])
    model, cfg2 = load_denoiser(out / "model.safetensors", CPU)
    assert model.n_attributes == 5 and not model.training
    assert json.loads((out / "config.json").read_text())["autoencoder_sha256"] == cfg["autoencoder_sha256"]


def test_latent_statistics_match_cache(conditioned_run, ae_setup, phantom_data):
    out, _ = conditioned_run
    ae = ae_setup[0]
    latents = load_file(str(out / "latents.safetensors"))["latents"]
    assert latents.shape == (4, 4, 16, 16, 16)
    _, cfg = load_checkpoint(out)
    np.testing.assert_allclose(cfg["latent_mean"], latents.mean(dim=(0, 2, 3, 4)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cfg["latent_std"], latents.std(dim=(0, 2, 3, 4)).numpy(), rtol=1e-5, atol=1e-6)
    z2 = encode_volume(ae, phantom_data.images[2], phantom_data.labels[2])
    torch.testing.assert_close(latents[2], z2, atol=1e-5, rtol=1e-5)


def test_second_run_reuses_latents_cache(conditioned_run, phantom_data, ae_setup, denoiser_config, monkeypatch):
    out, _ = conditioned_run
    cache = out / "latents.safetensors"
    before = (cache.stat().st_mtime_ns, cache.read_bytes())

    def no_encoding(*args, **kwargs):
        raise AssertionError("volumes were encoded again although the cache is valid")

    monkeypatch.setattr(latent_mod, "encode_volume", no_encoding)
    _train(phantom_data, ae_setup, out, denoiser_config, steps=1)
    assert (cache.stat().st_mtime_ns, cache.read_bytes()) == before


def test_stale_cache_is_rebuilt(tmp_path, phantom_data, ae_setup, ae_config, denoiser_config):
    out = tmp_path / "ldm"
    _train(phantom_data, ae_setup, out, denoiser_config, condition_on="none", steps=1)
    first = load_file(str(out / "latents.safetensors"))["latents"]
    other_ae = _make_ae(tmp_path / "ae2", phantom_data, ae_config, seed=1)  # different weights, different hash
    _train(phantom_data, other_ae, out, denoiser_config, condition_on="none", steps=1)
    second = load_file(str(out / "latents.safetensors"))["latents"]
    assert (first - second).abs().max() > 1e-4
    _, cfg = load_checkpoint(out)
    assert cfg["autoencoder_sha256"] == file_sha256(other_ae[2])
    # fewer cases: the key changes too
    _train(phantom_data.subset([0, 1, 2]), other_ae, out, denoiser_config, condition_on="none", steps=1)
    assert load_file(str(out / "latents.safetensors"))["latents"].shape[0] == 3


def test_unconditioned_run(tmp_path, phantom_data, ae_setup, denoiser_config):
    out = tmp_path / "ldm"
    result = _train(phantom_data, ae_setup, out, denoiser_config, condition_on="none", steps=2)
    _, cfg = load_checkpoint(out, kind="latent-diffusion")
    assert cfg["conditioning"] == {} and cfg["step"] == 2
    model, _ = load_denoiser(out, CPU)
    assert model.n_attributes == 0
    assert [h["step"] for h in result.history] == [1, 2]


def test_condition_on_lesion_needs_labels(tmp_path, phantom_data, ae_setup, denoiser_config, ae_config):
    from ldmtool.errors import LdmError

    unlabelled = phantom_data.subset([0, 1])
    unlabelled.labels = None
    unlabelled.label_names = {}
    ae = SliceAutoencoder(ae_config(), num_classes=0).eval()
    setup = (ae, {**ae_setup[1], "num_classes": 0, "label_names": {}}, ae_setup[2])
    with pytest.raises(LdmError, match="needs labels"):
        _train(unlabelled, setup, tmp_path / "ldm", denoiser_config)


def test_dataset_attributes_use_spacing(phantom_data):
    raw = dataset_attributes(phantom_data)
    assert raw.shape == (4, 5)
    for i in range(4):
        label = slices_to_volume(phantom_data.labels[i].numpy())
        n = int((label == 2).sum())
        assert raw[i, 0] == pytest.approx(n * 3.0 * 3.0 * 4.0 / 1000.0)


def test_mirror_trains_on_copies_validates_on_cases(tmp_path, phantom_data, ae_setup, denoiser_config):
    ae, ae_cfg, ae_path = ae_setup
    out = tmp_path / "ldm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        train_latent_diffusion(
            phantom_data,
            ae,
            ae_cfg,
            ae_path,
            out,
            model_cfg=denoiser_config(condition_on="lesion"),
            train_cfg=LDMTrainConfig(steps=2, batch_size=2, warmup_steps=1, lr=1e-3, val_fraction=0.25, mirror=True),
            device=CPU,
            seed=0,
            console=QUIET,
        )
    latents = load_file(str(out / "latents.safetensors"))["latents"]
    assert latents.shape[0] == 8  # four cases, then their mirrored copies
    mirrored = phantom_data.mirrored()
    z = encode_volume(ae, mirrored.images[1], mirrored.labels[1])
    torch.testing.assert_close(latents[5], z, atol=1e-5, rtol=1e-5)
    _, cfg = load_checkpoint(out)
    assert len(cfg["train_cases"]) == 3  # the cases trained on, without their copies
    # the lesion attributes standardised over cases and copies (a mirrored lesion sits elsewhere)
    raw = np.concatenate([dataset_attributes(phantom_data), dataset_attributes(mirrored)])
    np.testing.assert_allclose(cfg["conditioning"]["mean"], raw.mean(0), rtol=1e-5, atol=1e-6)
    trainer_split = latent_mod.split_case_indices(4, 0.25, 0)
    assert cfg["train_cases"] == [phantom_data.case_ids[i] for i in trainer_split[0]]


def _draws(flow: bool, mode: str, seed: int = 0, n: int = 20000) -> torch.Tensor:
    from types import SimpleNamespace

    from ldmtool.config import DenoiserConfig
    from ldmtool.train.latent import DenoiserTrainer

    fake = SimpleNamespace(
        flow=flow, model_cfg=DenoiserConfig(objective="flow" if flow else "v"), cfg=LDMTrainConfig(flow_timesteps=mode)
    )
    return DenoiserTrainer.draw_timesteps(fake, n, torch.Generator().manual_seed(seed))


def test_logit_normal_flow_times_favour_the_middle_and_follow_the_generator():
    """t/T = sigmoid(N(0, 1)): P(T/4 ≤ t < 3T/4) = P(|z| < logit 0.75) = 0.728, against 0.5 uniform;
    the draws come from the step's generator only (the global RNG does not change them)."""
    torch.manual_seed(1)
    ln = _draws(True, "logit-normal")
    torch.manual_seed(2)
    assert torch.equal(ln, _draws(True, "logit-normal"))
    middle = ((ln >= 250) & (ln < 750)).float().mean().item()
    assert 0.71 < middle < 0.745 and ln.min() >= 0 and ln.max() <= 999 and ln.dtype == torch.long
    for flow, mode in ((True, "uniform"), (False, "logit-normal")):  # ε/v models always draw uniformly
        u = _draws(flow, mode)
        assert 0.48 < ((u >= 250) & (u < 750)).float().mean().item() < 0.52


def test_flow_timestep_settings_are_checked():
    from ldmtool.errors import LdmError

    with pytest.raises(LdmError, match="flow_timesteps"):
        LDMTrainConfig(flow_timesteps="normal")
    with pytest.raises(LdmError, match="positive scale"):
        LDMTrainConfig(flow_logit_normal=(0.0, 0.0))


def test_keep_best_holds_the_lowest_held_out_loss(tmp_path, phantom_data, ae_setup, denoiser_config, monkeypatch):
    """`keep: best`: model.safetensors is the evaluation with the lowest held-out loss (here the
    second of four), last.safetensors the latest; the default keeps the latest."""
    ae, ae_cfg, ae_path = ae_setup
    losses = iter([0.3, 0.1, 0.2, 0.4])
    monkeypatch.setattr(latent_mod.DenoiserTrainer, "validation_step", lambda self: {"val_loss": next(losses)})
    out = tmp_path / "ldm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = train_latent_diffusion(
            phantom_data,
            ae,
            ae_cfg,
            ae_path,
            out,
            model_cfg=denoiser_config(condition_on="none"),
            train_cfg=LDMTrainConfig(steps=4, batch_size=2, warmup_steps=1, lr=1e-3, val_fraction=0.25, keep="best"),
            device=CPU,
            seed=0,
            console=QUIET,
        )
    assert [h["step"] for h in result.history] == [1, 2, 3, 4]
    assert load_checkpoint(out)[1]["step"] == 2 and result.best["val_loss"] == 0.1
    assert load_checkpoint(out / "last.safetensors")[1]["step"] == 4
    best, last = load_file(str(out / "model.safetensors")), load_file(str(out / "last.safetensors"))
    assert any(not torch.equal(best[k], last[k]) for k in best)
    from ldmtool.errors import LdmError

    with pytest.raises(LdmError, match="keep"):
        LDMTrainConfig(keep="newest")
    with pytest.raises(LdmError, match="val_fraction"):
        LDMTrainConfig(keep="best", val_fraction=0.0)
    assert LDMTrainConfig().keep == "latest"
