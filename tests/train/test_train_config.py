"""Typed configuration: dict round trips, unknown keys, validation, merging flags over YAML."""

import json
import re

import pytest

from ldmtool.config import (
    AELossConfig,
    AETrainConfig,
    AutoencoderConfig,
    DenoiserConfig,
    LDMTrainConfig,
    SegTrainConfig,
    dumps,
    from_dict,
    load_yaml,
    merge,
    to_dict,
)
from ldmtool.errors import LdmError


@pytest.mark.parametrize(
    "obj",
    [
        AutoencoderConfig(channels=(8, 16), norm_num_groups=4, latent_channels=3, attention=True, position_features=6),
        DenoiserConfig(
            channels=(8, 16, 16),
            norm_num_groups=4,
            objective="v",
            schedule="cosine",
            condition_on="lesion",
            attention_levels=(False, True, True),
        ),
        AETrainConfig(epochs=3, steps=7, batch_size=2, lr=1e-3, max_minutes=0.5, precision="fp32"),
        LDMTrainConfig(steps=7, ema_decay=0.99, min_snr_gamma=None, lesion_weight=2.0),
        SegTrainConfig(epochs=2, val_fraction=0.2, checkpoint_every=5),
        AELossConfig(kl_weight=1e-5, ssim_weight=0.2),
    ],
)
def test_round_trip_through_json(obj):
    data = to_dict(obj)
    back = from_dict(type(obj), json.loads(json.dumps(data)))
    assert back == obj
    assert to_dict(back) == data
    assert json.loads(dumps(obj)) == data


def test_to_dict_is_json_safe_and_from_dict_restores_tuples():
    cfg = DenoiserConfig(channels=(8, 16), norm_num_groups=4)
    data = to_dict(cfg)
    assert data["channels"] == [8, 16] and data["attention_levels"] == [False, True]
    back = from_dict(DenoiserConfig, data)
    assert back.channels == (8, 16) and isinstance(back.channels, tuple)
    assert back.attention_levels == (False, True)


def test_numeric_conversion():
    cfg = from_dict(LDMTrainConfig, {"lr": 1, "epochs": 2.0, "steps": None, "max_minutes": 3})
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0
    assert isinstance(cfg.epochs, int) and cfg.epochs == 2
    assert cfg.steps is None and cfg.max_minutes == 3.0 and isinstance(cfg.max_minutes, float)
    assert from_dict(AutoencoderConfig, {"channels": ["8", 16], "norm_num_groups": 4}).channels == (8, 16)


def test_unknown_key_error():
    with pytest.raises(LdmError, match="unknown AutoencoderConfig setting") as err:
        from_dict(AutoencoderConfig, {"channels": [8, 16], "norm_num_groups": 4, "chanels": [1]})
    assert "chanels" in str(err.value) and "latent_channels" in str(err.value)  # lists the allowed names
    with pytest.raises(LdmError, match="expected a mapping"):
        from_dict(AETrainConfig, [1, 2])


@pytest.mark.parametrize(
    "cls,data,match",
    [
        (AutoencoderConfig, {"channels": [8, 12], "norm_num_groups": 8}, "multiples of norm_num_groups"),
        (AutoencoderConfig, {"position_features": 3}, "even"),
        (DenoiserConfig, {"objective": "x0"}, "objective"),
        (DenoiserConfig, {"condition_on": "age,age"}, "condition_on"),
        (DenoiserConfig, {"schedule": "quadratic"}, "schedule"),
        (DenoiserConfig, {"channels": [8, 16], "norm_num_groups": 4, "attention_levels": [True]}, "attention_levels"),
        (AETrainConfig, {"val_fraction": 1.0}, "val_fraction"),
        (AETrainConfig, {"epochs": 0}, "epochs must be ≥ 1"),
        (AETrainConfig, {"precision": "fp8"}, "precision"),
        (SegTrainConfig, {"steps": 0}, "steps must be ≥ 1; got 0"),
        (LDMTrainConfig, {"steps": 0}, "steps must be ≥ 1; got 0"),
        (LDMTrainConfig, {"max_minutes": 0}, "max_minutes must be > 0"),
        (AETrainConfig, {"max_minutes": -1.0}, "max_minutes must be > 0"),
        (SegTrainConfig, {"lr": 0.0}, "lr must be > 0"),
        (AETrainConfig, {"batch_size": 0}, "batch_size must be ≥ 1"),
        (SegTrainConfig, {"val_fraction": -0.1}, r"val_fraction must be in \[0, 1\)"),
        (LDMTrainConfig, {"ema_decay": 1.0}, "ema_decay"),
        (LDMTrainConfig, {"cfg_dropout": 1.5}, "cfg_dropout"),
        (LDMTrainConfig, {"lesion_weight": -1}, "lesion_weight"),
        (AETrainConfig, {"checkpoint_every": 0}, "checkpoint_every"),
        (AETrainConfig, {"ema_decay": 0.9}, "unknown AETrainConfig setting"),  # the autoencoder keeps no EMA
        (SegTrainConfig, {"lesion_weight": 1.0}, "unknown SegTrainConfig setting"),
        (LDMTrainConfig, {"num_workers": 2}, "unknown LDMTrainConfig setting"),
    ],
)
def test_validation_errors(cls, data, match):
    with pytest.raises(LdmError, match=match):
        from_dict(cls, data)


def test_merge_ignores_none_and_deep_merges():
    base = {"a": 1, "b": {"x": 1, "y": 2}, "c": [1, 2]}
    out = merge(base, {"a": None, "b": {"y": None, "z": 3}, "c": [3], "d": {"k": None, "m": 1}})
    assert out == {"a": 1, "b": {"x": 1, "y": 2, "z": 3}, "c": [3], "d": {"m": 1}}
    assert base == {"a": 1, "b": {"x": 1, "y": 2}, "c": [1, 2]}  # inputs not modified
    assert merge({"lr": 1e-3}, {"lr": 0.0})["lr"] == 0.0  # falsy values still override
    assert merge({"flag": True}, {"flag": False})["flag"] is False


def test_load_yaml(tmp_path, tiny_yaml):
    cfg = load_yaml(tiny_yaml)
    ae = from_dict(AutoencoderConfig, cfg["autoencoder"])
    assert ae.channels == (8, 16) and ae.downsample == 2
    dn = from_dict(DenoiserConfig, cfg["denoiser"])
    assert dn.channels == (8, 16)
    assert load_yaml(None) == {}
    with pytest.raises(LdmError, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\nb: }")
    with pytest.raises(LdmError, match="not valid YAML") as err:
        load_yaml(bad)
    assert "\n" not in str(err.value)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(LdmError, match="mapping"):
        load_yaml(listy)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml(empty) == {}


def test_schedule_args_and_prediction_type():
    assert DenoiserConfig(schedule="cosine").schedule_args() == {}
    assert DenoiserConfig(beta_start=0.001, beta_end=0.02).schedule_args() == {"beta_start": 0.001, "beta_end": 0.02}
    assert DenoiserConfig(objective="v").prediction_type == "v_prediction"
    assert DenoiserConfig().prediction_type == "epsilon"
    assert DenoiserConfig().attention_levels == (False, False, True)


# --- strict config files: nothing coerced silently, unknown sections named ---------------------


def _yaml(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, message",
    [
        ("autoencodr:\n  channels: [8, 16]\n", "unknown section 'autoencodr' (did you mean autoencoder?)"),
        ("ae_train: 3\n", "section ae_train must be a mapping"),
    ],
)
def test_config_file_sections_checked(tmp_path, text, message):
    from ldmtool.config import load_yaml

    with pytest.raises(LdmError, match=re.escape(message)):
        load_yaml(_yaml(tmp_path, text))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("channels", [8.5, 16], "channels must be a whole number; got 8.5"),
        ("attention", 1, "attention must be true or false; got 1"),
        ("latent_channels", True, "latent_channels must be a whole number; got True"),
        ("latent_channels", "four", "latent_channels must be a whole number; got 'four'"),
        ("channels", "8,16", "channels must be a list"),
    ],
)
def test_no_silent_coercion(field, value, message):
    from ldmtool.config import AutoencoderConfig, from_dict

    with pytest.raises(LdmError, match=re.escape(message)):
        from_dict(AutoencoderConfig, {field: value}, section="autoencoder")


def test_yaml_number_spelled_as_string_is_a_number(tmp_path):
    """PyYAML reads `1e-3` (no dot) as a string; it is a number to a float field."""
    from ldmtool.config import AELossConfig, from_dict, load_yaml

    data = load_yaml(_yaml(tmp_path, "ae_loss:\n  kl_weight: 1e-3\n"))
    assert from_dict(AELossConfig, data["ae_loss"]).kl_weight == 1e-3


def test_huge_alias_value_gives_a_short_error(tmp_path):
    from ldmtool.config import AutoencoderConfig, from_dict, load_yaml

    big = "{" + ", ".join(f"k{i}: [1, 2, 3]" for i in range(5000)) + "}"
    data = load_yaml(_yaml(tmp_path, f"preprocess: {{}}\nautoencoder:\n  channels: {big}\n"))
    with pytest.raises(LdmError) as err:
        from_dict(AutoencoderConfig, data["autoencoder"])
    assert len(str(err.value)) < 300


@pytest.mark.parametrize("cls", [AETrainConfig, LDMTrainConfig, SegTrainConfig])
def test_train_config_errors_are_one_line_and_name_the_field(cls):
    for field_name, bad in (
        ("steps", 0),
        ("max_minutes", 0.0),
        ("lr", -1e-3),
        ("batch_size", 0),
        ("val_fraction", 1.5),
    ):
        with pytest.raises(LdmError) as err:
            cls(**{field_name: bad})
        assert "\n" not in str(err.value) and str(err.value).startswith(field_name)


def test_denoiser_defaults_live_in_its_config():
    assert (LDMTrainConfig().epochs, LDMTrainConfig().batch_size) == (100, 4)
    assert (AETrainConfig().epochs, AETrainConfig().batch_size) == (10, 32)


def test_example_yaml_sections_build(tiny_yaml):
    root = tiny_yaml.parent
    for path in sorted(root.glob("*.yaml")):
        cfg = load_yaml(path)
        for section, cls in (("ae_train", AETrainConfig), ("ldm_train", LDMTrainConfig), ("seg_train", SegTrainConfig)):
            if section in cfg:
                from_dict(cls, cfg[section])


@pytest.mark.parametrize(
    "command,cls", [("train-ae", AETrainConfig), ("train-ldm", LDMTrainConfig), ("train-seg", SegTrainConfig)]
)
def test_cli_help_defaults_come_from_the_config(command, cls):
    import dataclasses

    import typer

    from ldmtool.cli.common import default
    from ldmtool.cli.main import app

    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
    names = {f.name for f in dataclasses.fields(cls)} & set(params)
    assert {"epochs", "steps", "batch_size", "lr", "max_minutes", "precision", "checkpoint_every"} <= names
    for name in names:
        assert params[name].show_default == default(cls, name), name
    assert default(LDMTrainConfig, "batch_size") == "4" and default(AETrainConfig, "lr") == "0.0002"
