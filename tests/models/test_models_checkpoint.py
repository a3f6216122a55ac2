"""Checkpoints: safetensors + config round trip, kind checks, bad files, folder resolution."""

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ldmtool.errors import LdmError
from ldmtool.models.checkpoint import (
    file_sha256,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    write_config_json,
)

CONFIG = {
    "kind": "autoencoder",
    "model": {"channels": [8, 16]},
    "num_classes": 3,
    "affine": [[1.5, 0], [0, 1]],
    "label_names": {"background": 0, "lesion": 2},
    "note": "ünïcode ✓",
    "nothing": None,
}


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "net.weight": torch.randn(4, 3, 3, 3, generator=g),
        "net.bias": torch.randn(4, generator=g).double(),
        "counter": torch.tensor([3, 1, 4], dtype=torch.int64),
        "half": torch.randn(5, generator=g).to(torch.bfloat16),
        "strided": torch.randn(6, 4, generator=g).t(),  # not contiguous
    }


def test_round_trip(tmp_path):
    tensors = _tensors()
    path = save_checkpoint(tmp_path / "sub" / "model.safetensors", tensors, CONFIG)
    assert path == tmp_path / "sub" / "model.safetensors" and path.is_file()
    loaded, config = load_checkpoint(path)
    assert config == CONFIG
    assert set(loaded) == set(tensors)
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape
        assert torch.equal(loaded[k], v)
    loaded2, config2 = load_checkpoint(path, kind="autoencoder")
    assert config2 == CONFIG and torch.equal(loaded2["net.weight"], tensors["net.weight"])


def test_round_trip_module_state(tmp_path, ae_config):
    from ldmtool.models.autoencoder import SliceAutoencoder

    torch.manual_seed(0)
    a = SliceAutoencoder(ae_config(), num_classes=3)
    save_checkpoint(tmp_path / "m.safetensors", a.state_dict(), {"kind": "autoencoder"})
    torch.manual_seed(1)
    b = SliceAutoencoder(ae_config(), num_classes=3)
    tensors, _ = load_checkpoint(tmp_path / "m.safetensors")
    b.load_state_dict(tensors)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_no_temp_files_left_and_overwrite(tmp_path):
    save_checkpoint(tmp_path / "model.safetensors", _tensors(), CONFIG)
    save_checkpoint(tmp_path / "model.safetensors", {"x": torch.ones(2)}, {"kind": "latent-diffusion"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    tensors, config = load_checkpoint(tmp_path / "model.safetensors")
    assert set(tensors) == {"x"} and config == {"kind": "latent-diffusion"}


def test_failed_save_leaves_old_checkpoint(tmp_path, monkeypatch):
    import ldmtool.models.checkpoint as ckpt

    save_checkpoint(tmp_path / "model.safetensors", _tensors(), CONFIG)
    before = (tmp_path / "model.safetensors").read_bytes()

    def half_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "model.safetensors", {"x": torch.ones(2)}, {"kind": "autoencoder"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert (tmp_path / "model.safetensors").read_bytes() == before


def test_kind_mismatch(tmp_path):
    save_checkpoint(tmp_path / "ae.safetensors", _tensors(), CONFIG)
    with pytest.raises(LdmError, match="is an autoencoder checkpoint, expected a latent-diffusion checkpoint"):
        load_checkpoint(tmp_path / "ae.safetensors", kind="latent-diffusion")
    save_checkpoint(tmp_path / "nokind.safetensors", _tensors(), {"model": {}})
    with pytest.raises(LdmError, match="unknown"):
        load_checkpoint(tmp_path / "nokind.safetensors", kind="autoencoder")


def test_random_bytes(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(LdmError, match="not a readable safetensors checkpoint") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("data", [b"", b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!", b"hello world"])
def test_garbage_files(tmp_path, data):
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    with pytest.raises(LdmError):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "model.safetensors", _tensors(), CONFIG)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LdmError, match="not a readable"):
        load_checkpoint(path)


def test_safetensors_without_ldmtool_metadata(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(3)}, str(plain))
    with pytest.raises(LdmError, match="not an ldmtool checkpoint"):
        load_checkpoint(plain)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.ones(3)}, str(other), metadata={"format": "pt"})
    with pytest.raises(LdmError, match="not an ldmtool checkpoint"):
        load_checkpoint(other)


def test_folder_resolution(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LdmError, match="holds no checkpoint"):
        resolve_checkpoint(empty)
    with pytest.raises(LdmError, match="does not exist"):
        resolve_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(LdmError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")

    folder = tmp_path / "run"
    save_checkpoint(folder / "last.safetensors", {"x": torch.zeros(1)}, {"kind": "autoencoder", "which": "last"})
    assert resolve_checkpoint(folder) == folder / "last.safetensors"
    save_checkpoint(folder / "model.safetensors", {"x": torch.ones(1)}, {"kind": "autoencoder", "which": "best"})
    assert resolve_checkpoint(folder) == folder / "model.safetensors"
    tensors, config = load_checkpoint(folder, kind="autoencoder")
    assert config["which"] == "best" and tensors["x"].item() == 1.0
    assert resolve_checkpoint(folder / "last.safetensors") == folder / "last.safetensors"


def test_file_sha256(tmp_path):
    path = save_checkpoint(tmp_path / "model.safetensors", _tensors(), CONFIG)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path) == expected
    assert file_sha256(tmp_path) == expected  # a folder resolves to its model.safetensors
    assert file_sha256(path, limit=12) == expected[:12]


def test_write_config_json(tmp_path):
    write_config_json(tmp_path, CONFIG)
    assert json.loads((tmp_path / "config.json").read_text(encoding="utf-8")) == CONFIG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_weights_that_do_not_fit_their_config_are_one_line(tmp_path):
    """A checkpoint whose tensors do not match the network its config describes is refused."""
    from pathlib import Path

    from safetensors import safe_open

    from ldmtool.models.loaders import load_autoencoder

    src = Path(__file__).resolve().parents[1] / "regression" / "models" / "ae" / "model.safetensors"
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    ae, _ = load_autoencoder(src, torch.device("cpu"))  # the untouched file loads
    assert set(ae.state_dict()) == set(tensors)
    name = sorted(tensors)[0]
    tensors[name] = torch.zeros(tuple(s + 1 for s in tensors[name].shape))
    bad = tmp_path / "model.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(LdmError, match="weights do not fit the model") as err:
        load_autoencoder(bad, torch.device("cpu"))
    assert "\n" not in str(err.value) and "size mismatch" in str(err.value)
    del tensors[name]
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(LdmError, match="weights do not fit the model"):
        load_autoencoder(bad, torch.device("cpu"))
