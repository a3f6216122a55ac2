"""demo-data → train-ae → train-ldm → sample → stats with the tiny example config."""

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom

from ldmtool.io import read_dicom, read_nifti
from ldmtool.models.checkpoint import file_sha256, load_checkpoint

TINY_YAML = Path(__file__).resolve().parents[2] / "examples" / "tiny.yaml"

PROVENANCE_KEYS = {
    "seed",
    "sampler",
    "steps",
    "seconds",
    "device",
    "autoencoder_sha256",
    "ldm_sha256",
    "index",
    "files",
    "base_seed",
    "eta",
    "conditions",
}


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def _snapshot(folder):
    """{relative path: (mtime_ns, bytes)} of every sample file (provenance included)."""
    out = {}
    for sub in ("imagesTr", "labelsTr", "provenance"):
        for p in sorted((folder / sub).iterdir()):
            out[f"{sub}/{p.name}"] = (p.stat().st_mtime_ns, p.read_bytes())
    return out


def _sample_arrays(folder, index):
    name = f"synth_{index:05d}"
    image = read_nifti(folder / "imagesTr" / f"{name}_0000.nii.gz")
    label = read_nifti(folder / "labelsTr" / f"{name}.nii.gz")
    return np.asarray(image.array), np.asarray(label.array)


def test_training_outputs(trained):
    assert _names(trained.ae) == [
        "config.json",
        "history.json",
        "last.safetensors",
        "model.safetensors",
        "state.json",
        "train_state.safetensors",
    ]
    assert _names(trained.ldm) == [
        "config.json",
        "history.json",
        "latents.safetensors",
        "model.safetensors",
        "state.json",
        "train_state.safetensors",
    ]
    _, ae_cfg = load_checkpoint(trained.ae, kind="autoencoder")
    _, ldm_cfg = load_checkpoint(trained.ldm, kind="latent-diffusion")
    assert ae_cfg["volume_shape"] == [32, 32, 16] and ae_cfg["num_classes"] == 3
    assert ae_cfg["model"]["channels"] == [8, 16]  # from examples/tiny.yaml
    assert ldm_cfg["autoencoder_sha256"] == file_sha256(trained.ae)
    assert ldm_cfg["step"] == 6 and ldm_cfg["latent_shape"] == [4, 16, 16, 16]


def test_sample_outputs(trained):
    s = trained.samples
    assert _names(s / "imagesTr") == [f"synth_{i:05d}_0000.nii.gz" for i in range(3)]
    assert _names(s / "labelsTr") == [f"synth_{i:05d}.nii.gz" for i in range(3)]
    assert _names(s / "provenance") == [f"synth_{i:05d}.json" for i in range(3)]
    assert (s / "montage.png").is_file() and (s / "montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((s / "dataset.json").read_text())
    assert info["numTraining"] == 3 and info["labels"] == {"background": 0, "head": 1, "lesion": 2}
    seeds = set()
    for i in range(3):
        prov = json.loads((s / "provenance" / f"synth_{i:05d}.json").read_text())
        assert PROVENANCE_KEYS <= set(prov)
        assert prov["index"] == i and prov["sampler"] == "ddim" and prov["steps"] == 3
        assert prov["seconds"] > 0 and prov["device"].startswith("cpu")
        assert prov["autoencoder_sha256"] == file_sha256(trained.ae)
        assert prov["ldm_sha256"] == file_sha256(trained.ldm)
        assert prov["files"] == {
            "image": f"imagesTr/synth_{i:05d}_0000.nii.gz",
            "label": f"labelsTr/synth_{i:05d}.nii.gz",
        }
        seeds.add(prov["seed"])
    assert len(seeds) == 3


def test_sample_geometry(trained):
    _, ae_cfg = load_checkpoint(trained.ae)
    reference = np.asarray(ae_cfg["reference_affine"])
    for i in range(3):
        name = f"synth_{i:05d}"
        image = read_nifti(trained.samples / "imagesTr" / f"{name}_0000.nii.gz")
        label = read_nifti(trained.samples / "labelsTr" / f"{name}.nii.gz")
        assert image.shape == label.shape == (32, 32, 16)
        np.testing.assert_allclose(image.affine, label.affine, atol=1e-6)
        np.testing.assert_allclose(image.affine, reference, atol=1e-4)
        assert np.isfinite(np.asarray(image.array)).all()
        assert set(np.unique(np.asarray(label.array)).tolist()) <= {0, 1, 2}


def test_rerun_skips_finished_samples(trained, cli, tmp_path):
    out = tmp_path / "S"
    shutil.copytree(trained.samples, out)
    before = _snapshot(out)
    r = cli("sample", "--ae", trained.ae, "--ldm", trained.ldm, "--out", out, "--n", 3, "--steps", 3, "--batch-size", 2)
    assert r.code == 0, r.both
    assert _snapshot(out) == before
    assert "skipped" in r.out
    assert any("skipped" in line and line.rstrip(" │|").split()[-1] == "3" for line in r.out.splitlines())
    assert any(
        line.split("│")[1:2] and "written" in line and line.rstrip(" │|").split()[-1] == "0"
        for line in r.out.splitlines()
    )

    r = cli("sample", "--ae", trained.ae, "--ldm", trained.ldm, "--out", out, "--n", 4, "--steps", 3, "--batch-size", 2)
    assert r.code == 0, r.both
    after = _snapshot(out)
    new = sorted(set(after) - set(before))
    assert new == ["imagesTr/synth_00003_0000.nii.gz", "labelsTr/synth_00003.nii.gz", "provenance/synth_00003.json"]
    assert {k: after[k] for k in before} == before
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 4


def test_sample_independent_of_batch_size(trained, cli, tmp_path):
    results = {}
    for bs in (1, 3):
        out = tmp_path / f"bs{bs}"
        r = cli(
            "sample",
            "--ae",
            trained.ae,
            "--ldm",
            trained.ldm,
            "--out",
            out,
            "--n",
            3,
            "--steps",
            3,
            "--batch-size",
            bs,
            "--decode-batch",
            5 if bs == 1 else 64,
        )
        assert r.code == 0, r.both
        results[bs] = out
    ref_img, ref_lab = _sample_arrays(trained.samples, 2)  # written with --batch-size 2
    assert np.ptp(ref_img) > 0
    for out in results.values():
        img, lab = _sample_arrays(out, 2)
        np.testing.assert_allclose(img, ref_img, atol=1e-4 * max(1.0, float(np.abs(ref_img).max())), rtol=1e-4)
        assert (lab != ref_lab).mean() < 1e-3  # argmax of near-identical probabilities
        prov = json.loads((out / "provenance" / "synth_00002.json").read_text())
        ref_prov = json.loads((trained.samples / "provenance" / "synth_00002.json").read_text())
        assert prov["seed"] == ref_prov["seed"]
    # and different indices really are different samples
    other, _ = _sample_arrays(trained.samples, 1)
    assert np.abs(other - ref_img).max() > 1e-3


def test_ddpm_sample_independent_of_batch_size(trained, cli, tmp_path):
    arrays = []
    for bs in (1, 3):
        out = tmp_path / f"bs{bs}"
        r = cli(
            "sample",
            "--ae",
            trained.ae,
            "--ldm",
            trained.ldm,
            "--out",
            out,
            "--n",
            3,
            "--steps",
            3,
            "--sampler",
            "ddpm",
            "--batch-size",
            bs,
        )
        assert r.code == 0, r.both
        arrays.append(_sample_arrays(out, 2)[0])
    np.testing.assert_allclose(arrays[0], arrays[1], atol=1e-4 * max(1.0, float(np.abs(arrays[1]).max())), rtol=1e-4)


def test_sample_dicom(trained, cli, tmp_path):
    out = tmp_path / "SD"
    r = cli(
        "sample", "--ae", trained.ae, "--ldm", trained.ldm, "--out", out, "--n", 1, "--steps", 3, "--format", "dicom"
    )
    assert r.code == 0, r.both
    image_dir, seg_path = out / "dicom" / "synth_00000" / "image", out / "dicom" / "synth_00000" / "label.dcm"
    image = read_dicom(image_dir)
    assert image.shape == (32, 32, 16)
    assert "SYNTHETIC" in image.meta["series_description"]
    first = pydicom.dcmread(sorted(p for p in image_dir.iterdir() if p.is_file())[0])
    assert "SYNTHETIC" in first.SeriesDescription
    assert first.Modality == "OT"  # the phantoms are NIfTI, trained without --modality
    # the label map is a DICOM SEG in the image's study and frame of reference
    seg = pydicom.dcmread(seg_path)
    assert seg.Modality == "SEG" and "SYNTHETIC" in seg.SeriesDescription
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    prov = json.loads((out / "provenance" / "synth_00000.json").read_text())
    assert prov["files"] == {"image": "dicom/synth_00000/image", "label": "dicom/synth_00000/label.dcm"}
    label = _seg_label_map(seg_path, image_dir, image.shape)
    # same index and seed as the NIfTI sample 0 written with the same models
    ref_img, ref_lab = _sample_arrays(trained.samples, 0)
    span = float(np.ptp(ref_img))
    np.testing.assert_allclose(np.asarray(image.array), ref_img, atol=2e-3 * span)
    assert (label != ref_lab).mean() < 1e-3
    _, ae_cfg = load_checkpoint(trained.ae)
    np.testing.assert_allclose(image.affine, np.asarray(ae_cfg["reference_affine"]), atol=1e-3)
    assert not (out / "imagesTr").exists() or not any((out / "imagesTr").iterdir())


def test_stats(trained, cli):
    r = cli("stats", trained.samples, "--real", trained.data)
    assert r.code == 0, r.both
    for row in ("mean intensity", "head volume fraction", "image and mask share the affine"):
        assert row in r.out
    assert "Traceback" not in r.both


def test_conditioned_sampling(trained, conditioned_ldm, cli, tmp_path):
    out = tmp_path / "SC"
    r = cli(
        "sample",
        "--ae",
        trained.ae,
        "--ldm",
        conditioned_ldm,
        "--out",
        out,
        "--n",
        2,
        "--steps",
        2,
        "--condition",
        "lesion_volume=2",
        "--guidance",
        2,
    )
    assert r.code == 0, r.both
    assert len(list((out / "imagesTr").iterdir())) == 2
    prov = json.loads((out / "provenance" / "synth_00001.json").read_text())
    assert prov["conditions"] == {"lesion_volume": 2.0} and prov["guidance"] == 2.0
    _, cfg = load_checkpoint(conditioned_ldm)
    assert len(cfg["conditioning"]["attributes"]) == 5


def test_condition_on_unconditioned_model(trained, cli, tmp_path):
    out = tmp_path / "SU"
    r = cli(
        "sample",
        "--ae",
        trained.ae,
        "--ldm",
        trained.ldm,
        "--out",
        out,
        "--n",
        1,
        "--steps",
        2,
        "--condition",
        "lesion_volume=2",
    )
    assert r.code == 1
    lines = r.error_lines()
    assert len(lines) == 1 and "error" in lines[0] and "without conditioning" in lines[0]
    assert "Traceback" not in r.both


def test_unknown_condition_name(trained, conditioned_ldm, cli, tmp_path):
    r = cli(
        "sample",
        "--ae",
        trained.ae,
        "--ldm",
        conditioned_ldm,
        "--out",
        tmp_path / "x",
        "--n",
        1,
        "--condition",
        "size=2",
    )
    assert r.code == 1 and len(r.error_lines()) == 1 and "unknown condition" in r.err
    assert not (tmp_path / "x").exists()


def _seg_label_map(seg_path, image_dir, shape):
    """The (I, J, K) label map of a synthetic DICOM SEG on its image series (slice k = InstanceNumber k + 1;
    segment n = the n-th nonzero class, as io/dicom_seg.py writes them)."""
    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    by_number = {}
    for p in (p for p in image_dir.iterdir() if p.is_file()):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        by_number[int(ds.InstanceNumber)] = ds.SOPInstanceUID
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    label = np.zeros(shape, dtype=np.uint8)
    for k in range(shape[2]):
        pixels = seg.get_pixels_by_source_instance(
            [by_number[k + 1]], segment_numbers=numbers, assert_missing_frames_are_empty=True
        )[0]
        for i, number in enumerate(numbers):
            label[:, :, k][pixels[..., i].T > 0] = number
    return label


def test_train_ae_adversarial_flags(trained, cli, tmp_path):
    from ldmtool.train.state import load_state

    out = tmp_path / "AEA"
    r = cli(
        "--quiet", "train-ae", trained.data, "--out", out, "--config", TINY_YAML,
        "--adversarial-weight", "0.05", "--adversarial-start", "1", "--steps", "3",
    )  # fmt: skip
    assert r.code == 0, r.both
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["loss"]["adversarial_weight"] == 0.05 and cfg["loss"]["adversarial_start"] == 1
    state = load_state(out)
    assert state.tensors["discriminator"] and state.tensors["optimizer_discriminator"]
    assert cfg["metrics"]["train_adv"] > 0 and cfg["metrics"]["train_disc"] > 0
    bad = cli("train-ae", trained.data, "--out", tmp_path / "AEB", "--config", TINY_YAML, "--adversarial-weight", "-1")
    assert bad.code != 0 and len(bad.error_lines()) == 1 and "adversarial_weight" in bad.err
