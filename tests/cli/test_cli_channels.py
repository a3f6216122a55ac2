"""Several channels (contrasts) per case end to end: demo-data --contrasts → train-ae → train-ldm →
sample → impute --missing-channel, and the one-line errors for channels that do not match."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ldmtool.io import load_dataset
from ldmtool.models.checkpoint import load_checkpoint, save_checkpoint
from ldmtool.models.loaders import load_autoencoder
from tests.cli.conftest import TINY_YAML, _must

CHANNELS = ["t1", "flair"]


@dataclass
class TwoChannel:
    data: Path
    ae: Path
    ldm: Path
    samples: Path
    root: Path


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> TwoChannel:
    """A T1 + FLAIR phantom set, its tiny models and two samples."""
    root = tmp_path_factory.mktemp("channels")
    t = TwoChannel(root / "data", root / "AE", root / "LDM", root / "S", root)
    _must("demo-data", t.data, "--n", 6, "--shape", "32,32,16", "--contrasts", ",".join(CHANNELS))
    _must("train-ae", t.data, "--out", t.ae, "--config", TINY_YAML)
    _must("train-ldm", t.data, "--ae", t.ae, "--out", t.ldm, "--config", TINY_YAML)
    _must("sample", "--ae", t.ae, "--ldm", t.ldm, "--out", t.samples, "--n", 2, "--steps", 3)
    return t


def _nii(path):
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine


def test_checkpoint_records_the_channels(two):
    _, cfg = load_checkpoint(two.ae, kind="autoencoder")
    assert cfg["image_channels"] == 2 and cfg["channel_names"] == CHANNELS
    ranges = cfg["channel_intensity_ranges"]
    assert len(ranges) == 2 and ranges[0] != ranges[1] and cfg["intensity_range"] == ranges[0]
    ae, checked = load_autoencoder(two.ae, "cpu")
    assert ae.image_channels == 2 and checked.channel_names == CHANNELS
    _, ldm_cfg = load_checkpoint(two.ldm, kind="latent-diffusion")
    assert ldm_cfg["latent_shape"] == [4, 16, 16, 16]  # all channels of a slice in one latent


def test_samples_keep_the_channel_names(two):
    s = two.samples
    names = sorted(p.name for p in (s / "imagesTr").iterdir())
    assert names == [f"synth_{i:05d}_{c:04d}.nii.gz" for i in range(2) for c in range(2)]
    info = json.loads((s / "dataset.json").read_text())
    assert info["channel_names"] == {"0": "t1", "1": "flair"}
    prov = json.loads((s / "provenance" / "synth_00001.json").read_text())
    assert prov["files"]["channels"] == {
        "t1": "imagesTr/synth_00001_0000.nii.gz",
        "flair": "imagesTr/synth_00001_0001.nii.gz",
    }
    label, affine = _nii(s / "labelsTr" / "synth_00001.nii.gz")
    for c in range(2):
        image, a = _nii(s / "imagesTr" / f"synth_00001_{c:04d}.nii.gz")
        assert image.shape == label.shape == (32, 32, 16) and np.allclose(a, affine) and np.isfinite(image).all()
    assert load_dataset(s).channel_list == CHANNELS  # the sample folder is itself a training set


def test_each_channel_back_in_its_own_intensity_scale(two):
    from ldmtool.pipelines.latent_diffusion import LatentDiffusionPipeline

    pipe = LatentDiffusionPipeline.from_pretrained(two.ae, two.ldm)
    (lo0, hi0), (lo1, hi1) = pipe.intensity_ranges
    unit = np.stack([np.zeros((4, 4, 2)), np.ones((4, 4, 2))], axis=-1).astype(np.float32)  # t1 = 0, flair = 1
    out = pipe.to_source_scale(unit)
    assert np.allclose(out[..., 0], lo0) and np.allclose(out[..., 1], hi1)


def test_impute_missing_channel(two, cli, tmp_path):
    """FLAIR synthesised from T1: T1 comes back bit for bit, every FLAIR voxel is imputed, and what is
    imputed follows the observed channel (two cases, the same seed, different FLAIR)."""
    outs = []
    for case in ("phantom_000", "phantom_001"):
        src = two.data / "imagesTr" / f"{case}_0000.nii.gz"
        out = tmp_path / case
        args = ("impute", src, "--ae", two.ae, "--ldm", two.ldm, "--out", out, "--missing-channel", "flair")
        r = cli(*args, "--samples", 2, "--steps", 3)
        assert r.code == 0, r.both
        t1_in, affine = _nii(src)
        t1_out, affine_out = _nii(out / f"{case}_imputed_0000.nii.gz")
        assert np.array_equal(t1_in, t1_out) and np.allclose(affine, affine_out)
        assert not _nii(out / f"{case}_missing_0000.nii.gz")[0].any()
        assert _nii(out / f"{case}_missing_0001.nii.gz")[0].all()
        flair, _ = _nii(out / f"{case}_imputed_0001.nii.gz")
        assert flair.shape == t1_in.shape and np.isfinite(flair).all()
        assert (_nii(out / f"{case}_std_0001.nii.gz")[0] > 0).mean() > 0.9
        prov = json.loads((out / f"{case}_impute.json").read_text())
        assert prov["missing_from"]["channel"] == "flair" and prov["channels"] == CHANNELS
        outs.append(flair)
    assert not np.allclose(outs[0], outs[1])
    # the FLAIR file need not exist, and when it does it is not read
    moved = tmp_path / "one" / "imagesTr"
    moved.mkdir(parents=True)
    shutil.copy(two.data / "imagesTr" / "phantom_000_0000.nii.gz", moved)
    r = cli("impute", moved / "phantom_000_0000.nii.gz", "--ae", two.ae, "--ldm", two.ldm, "--out",
            tmp_path / "again", "--missing-channel", "flair", "--samples", 2, "--steps", 3)  # fmt: skip
    assert r.code == 0, r.both
    assert np.array_equal(_nii(tmp_path / "again" / "phantom_000_imputed_0001.nii.gz")[0], outs[0])


def _one_error(r, *needles):
    assert r.code == 1, r.both
    lines = r.error_lines()
    assert len(lines) == 1 and "Traceback" not in r.both, r.both
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cases_lacking_a_channel_file_train_with_it_missing(two, cli, tmp_path):
    from ldmtool.data.prepared import prepare_dataset
    from ldmtool.data.preprocess import PreprocessConfig

    data = tmp_path / "data"
    shutil.copytree(two.data, data)
    (data / "imagesTr" / "phantom_003_0001.nii.gz").unlink()  # no FLAIR
    (data / "imagesTr" / "phantom_001_0000.nii.gz").unlink()  # no T1
    r = cli("train-ae", data, "--out", tmp_path / "AE", "--config", TINY_YAML)
    assert r.code == 0, r.both
    assert "2 of 6 cases lack a channel's file (t1 of 1 case, flair of 1 case, e.g. phantom_001)" in " ".join(
        r.both.split()
    ), r.both
    assert (tmp_path / "AE" / "model.safetensors").is_file()
    r = cli("train-ldm", data, "--ae", tmp_path / "AE", "--out", tmp_path / "LDM", "--config", TINY_YAML)
    assert r.code == 0, r.both
    # what the trainers see: the absent channel all missing, the case's other channel all observed
    _, cfg = load_checkpoint(tmp_path / "AE", kind="autoencoder")
    prepared = prepare_dataset(data, PreprocessConfig.from_dict(cfg["preprocess"]))
    observed, images = prepared.observed, prepared.images  # (N, D, C, H, W)
    ids = prepared.case_ids
    i3, i1 = ids.index("phantom_003"), ids.index("phantom_001")
    assert observed[i3, :, 1].sum() == 0 and observed[i3, :, 0].all() and images[i3, :, 1].abs().sum() == 0
    assert observed[i1, :, 0].sum() == 0 and observed[i1, :, 1].all()
    assert observed[ids.index("phantom_000")].all()
    # an absent channel is given no intensity range; the others keep theirs
    assert np.isnan(prepared.channel_ranges[i3][1]).all() and np.isfinite(prepared.channel_ranges[i3][0]).all()
    # commands that need every channel say which file is missing
    _one_error(
        cli("train-seg", data, "--out", tmp_path / "seg", "--steps", 1),
        "case phantom_001 has no channel 0000 file; train-seg needs every channel",
    )
    _one_error(cli("stats", two.samples, "--real", data), "case phantom_001 has no channel 0000 (t1) file")


def test_channel_count_differs_from_the_model(two, cli, tmp_path):
    _must("demo-data", tmp_path / "grey", "--n", 3, "--shape", "32,32,16")
    r = cli("train-ldm", tmp_path / "grey", "--ae", two.ae, "--out", tmp_path / "LDM", "--config", TINY_YAML)
    _one_error(r, "has 1 image channel (MR)", "trained on 2 (t1, flair)")
    r = cli("impute", tmp_path / "grey" / "imagesTr" / "phantom_000_0000.nii.gz", "--ae", two.ae, "--ldm", two.ldm,
            "--out", tmp_path / "I", "--missing-slices", "3")  # fmt: skip
    _one_error(r, "case phantom_000 has no channel 0001 (flair) file", "--missing-channel flair")


def test_missing_channel_errors(two, trained, cli, tmp_path):
    src = two.data / "imagesTr" / "phantom_000_0000.nii.gz"
    common = ("--ae", two.ae, "--ldm", two.ldm)
    _one_error(cli("impute", src, *common, "--out", tmp_path / "a", "--missing-channel", "t2"),
               "--missing-channel t2: the model's channels are t1, flair")  # fmt: skip
    grey = sorted((trained.data / "imagesTr").glob("*.nii.gz"))[0]
    r = cli(
        "impute", grey, "--ae", trained.ae, "--ldm", trained.ldm, "--out", tmp_path / "b", "--missing-channel", "t1"
    )
    _one_error(r, "--missing-channel needs a model of several channels")


def test_dicom_samples_one_series_per_channel(two, cli, tmp_path):
    import pydicom

    from ldmtool.io import read_volume

    common = ("--ae", two.ae, "--ldm", two.ldm, "--n", 1, "--steps", 2)
    assert cli("sample", *common, "--out", tmp_path / "nii").code == 0
    r = cli("sample", *common, "--out", tmp_path / "dcm", "--format", "dicom")
    assert r.code == 0, r.both
    sample = tmp_path / "dcm" / "dicom" / "synth_00000"
    assert sorted(p.name for p in sample.iterdir()) == ["image_0000", "image_0001", "label.dcm"]
    headers = [pydicom.dcmread(sorted((sample / f"image_{c:04d}").iterdir())[0]) for c in range(2)]
    seg = pydicom.dcmread(sample / "label.dcm")
    assert len({h.StudyInstanceUID for h in headers} | {seg.StudyInstanceUID}) == 1
    assert len({h.FrameOfReferenceUID for h in headers} | {seg.FrameOfReferenceUID}) == 1
    assert headers[0].SeriesInstanceUID != headers[1].SeriesInstanceUID
    assert [int(h.SeriesNumber) for h in headers] == [1, 2] and int(seg.SeriesNumber) == 3
    assert headers[1].SeriesDescription.endswith("flair") and "SYNTHETIC" in headers[1].SeriesDescription
    prov = json.loads((tmp_path / "dcm" / "provenance" / "synth_00000.json").read_text())
    assert prov["files"]["channels"] == {"t1": "dicom/synth_00000/image_0000", "flair": "dicom/synth_00000/image_0001"}
    for c in range(2):  # the same sample as the NIfTI one, channel by channel (int16 quantisation aside)
        nii = _nii(tmp_path / "nii" / "imagesTr" / f"synth_00000_{c:04d}.nii.gz")[0]
        dcm = read_volume(sample / f"image_{c:04d}")
        assert dcm.array.shape == nii.shape
        np.testing.assert_allclose(dcm.array, nii, atol=1e-3 * (float(nii.max()) - float(nii.min())) + 1e-6)


def test_checkpoint_without_channel_fields_loads_as_one_channel(trained, tmp_path):
    tensors, cfg = load_checkpoint(trained.ae, kind="autoencoder")
    assert cfg["image_channels"] == 1
    old = {k: v for k, v in cfg.items() if k not in ("image_channels", "channel_names")}
    path = save_checkpoint(tmp_path / "old.safetensors", tensors, old)
    ae, checked = load_autoencoder(path, "cpu")
    assert ae.image_channels == 1 and checked.image_channels == 1 and checked.channel_names == ["image"]


def test_two_channel_png_images(cli, tmp_path):
    """nnU-Net's 2D layout with two channel files per case: samples are one PNG per channel."""
    from PIL import Image

    root = tmp_path / "d"
    (root / "imagesTr").mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    for i in range(6):
        blob = np.exp(-((yy - 8) ** 2 + (xx - 4 - i) ** 2) / 8)
        a = (60 + 120 * blob + rng.normal(0, 4, (16, 16))).clip(0, 255).astype(np.uint8)  # bright blob
        b = (200 - 120 * blob + rng.normal(0, 4, (16, 16))).clip(0, 255).astype(np.uint8)  # the same blob dark
        Image.fromarray(a).save(root / "imagesTr" / f"c{i}_0000.png")
        Image.fromarray(b).save(root / "imagesTr" / f"c{i}_0001.png")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "a", "1": "b"}, "file_ending": ".png"}))
    steps = ("--config", TINY_YAML, "--steps", 2)
    _must("train-ae", root, "--out", tmp_path / "AE", *steps)
    _must("train-ldm", root, "--ae", tmp_path / "AE", "--out", tmp_path / "LDM", *steps)
    r = cli(
        "sample", "--ae", tmp_path / "AE", "--ldm", tmp_path / "LDM", "--out", tmp_path / "S", "--n", 2, "--steps", 2
    )
    assert r.code == 0, r.both
    names = sorted(p.name for p in (tmp_path / "S" / "imagesTr").iterdir())
    assert names == ["synth_00000_0000.png", "synth_00000_0001.png", "synth_00001_0000.png", "synth_00001_0001.png"]
    png = np.asarray(Image.open(tmp_path / "S" / "imagesTr" / "synth_00001_0001.png"))
    assert png.shape == (16, 16) and png.dtype == np.uint8
    assert load_dataset(tmp_path / "S").channel_list == ["a", "b"]


@pytest.mark.parametrize("arch_dims", [("ldseg", "2"), ("unet", "3")])
def test_segment_reads_every_channel(two, cli, tmp_path, arch_dims):
    arch, dims = arch_dims
    model = tmp_path / "SEG"
    _must("train-seg", two.data, "--out", model, "--config", TINY_YAML, "--arch", arch, "--dims", dims)
    _, cfg = load_checkpoint(model, kind="segmenter")
    assert cfg["image_channels"] == 2 and cfg["channel_names"] == CHANNELS
    # a folder of channel files: one input per case (its other channels read from beside it)
    r = cli("segment", two.data / "imagesTr", "--model", model, "--out", tmp_path / "out")
    assert r.code == 0, r.both
    written = sorted(p.name for p in (tmp_path / "out").glob("*_seg.nii.gz"))
    assert written == [f"phantom_{i:03d}_seg.nii.gz" for i in range(6)]
    seg, affine = _nii(tmp_path / "out" / "phantom_002_seg.nii.gz")
    image, image_affine = _nii(two.data / "imagesTr" / "phantom_002_0001.nii.gz")
    assert seg.shape == image.shape and np.allclose(affine, image_affine) and set(np.unique(seg)) <= {0, 1, 2}
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(two.data / "imagesTr" / "phantom_002_0000.nii.gz", lone)
    _one_error(cli("segment", lone, "--model", model, "--out", tmp_path / "out2"),
               "case phantom_002 has no channel 0001 (flair) file")  # fmt: skip


def test_evaluate_one_channel_of_several(two, cli, tmp_path):
    args = ("--real", two.data, "--synthetic", two.samples, "--only", "fidelity,diversity")
    r = cli("evaluate", *args, "--out", tmp_path / "ev")
    _one_error(r, "has 2 channels per case (t1, flair); evaluation reads one: choose it with --channel t1")
    _one_error(cli("evaluate", *args, "--out", tmp_path / "ev", "--channel", "t2"), "has no channel 't2'")
    reports = {}
    for name in CHANNELS:
        r = cli("evaluate", *args, "--out", tmp_path / name, "--channel", name, "--cache-dir", "none")
        assert r.code == 0, r.both
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
        assert reports[name]["inputs"]["channel"] == name and reports[name]["inputs"]["real"]["n"] == 6
    # the two contrasts are different images: their features, hence their distances, differ
    assert reports["t1"]["fidelity"]["fid"] != reports["flair"]["fidelity"]["fid"]
    # a set of one channel is that channel: FLAIR samples against the multi-channel real set
    solo = tmp_path / "flair_only" / "imagesTr"
    solo.mkdir(parents=True)
    for f in sorted((two.samples / "imagesTr").glob("*_0001.nii.gz")):
        shutil.copy(f, solo / f.name.replace("_0001", "_0000"))
    r = cli("evaluate", "--real", two.data, "--synthetic", solo.parent, "--only", "fidelity,diversity",
            "--out", tmp_path / "solo", "--channel", "flair", "--cache-dir", "none")  # fmt: skip
    assert r.code == 0, r.both
    solo_report = json.loads((tmp_path / "solo" / "report.json").read_text())
    assert solo_report["fidelity"]["fid"] == pytest.approx(reports["flair"]["fidelity"]["fid"], rel=1e-4)


@pytest.mark.parametrize("method", ["repaint", "guidance"])
def test_inpaint_every_channel(two, cli, tmp_path, method):
    src = two.data / "imagesTr" / "phantom_000_0000.nii.gz"
    region = np.zeros((32, 32, 16), np.uint8)
    region[12:16, 12:16, 6:9] = 1
    nib.save(nib.Nifti1Image(region, _nii(src)[1]), str(tmp_path / "region.nii.gz"))
    out = tmp_path / "ip"
    r = cli("inpaint", src, "--region", tmp_path / "region.nii.gz", "--ae", two.ae, "--ldm", two.ldm,
            "--out", out, "--steps", 3, "--method", method, "--label", "lesion")  # fmt: skip
    assert r.code == 0, r.both
    inside = region.astype(bool)
    for c in range(2):
        written, affine = _nii(out / f"phantom_000_inpainted_{c:04d}.nii.gz")
        given, given_affine = _nii(two.data / "imagesTr" / f"phantom_000_{c:04d}.nii.gz")
        assert written.dtype == given.dtype and np.allclose(affine, given_affine)
        assert np.array_equal(written[~inside], given[~inside])  # bit for bit outside the region
        assert not np.array_equal(written[inside], given[inside])
    label, _ = _nii(out / "phantom_000_inpainted_label.nii.gz")
    assert (label[inside] == 2).all()  # the region labelled as the lesion asked for
    record = json.loads((out / "phantom_000_inpaint.json").read_text())
    assert set(record["seam"]) == {"t1", "flair", "within"}
    assert "seam flair (border gradient)" in " ".join(r.both.split())
    # the other channel must be beside the given file
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(src, lone)
    r = cli("inpaint", lone / src.name, "--region", tmp_path / "region.nii.gz", "--ae", two.ae, "--ldm", two.ldm,
            "--out", tmp_path / "ip2")  # fmt: skip
    _one_error(r, "case phantom_000 has no channel 0001 (flair) file")


def test_reject_memorized_with_several_channels(two, cli, tmp_path):
    # "training set" = the samples this model draws first (same seeds): every first candidate is a
    # copy in both channels and is replaced by the sample's next seed
    from ldmtool.diffusion.samplers import sample_seed

    common = ("--ae", two.ae, "--ldm", two.ldm, "--n", 2, "--batch-size", 2, "--steps", 3)
    first = tmp_path / "first"
    assert cli("sample", *common, "--out", first).code == 0
    out = tmp_path / "filtered"
    r = cli("sample", *common, "--out", out, "--reject-memorized", "0.95", "--train", first)
    assert r.code == 0, r.both
    for k in range(2):
        prov = json.loads((out / "provenance" / f"synth_{k:05d}.json").read_text())
        assert prov["rejected_candidates"] >= 1 and prov["seed"] == sample_seed(0, k, prov["rejected_candidates"])
        assert prov["memorization_ssim"] <= 0.95
        for c in range(2):
            kept, copied = (_nii(d / "imagesTr" / f"synth_{k:05d}_{c:04d}.nii.gz")[0] for d in (out, first))
            assert np.abs(kept.astype(float) - copied).max() > 1e-3


def _dicom_contrast_folders(two: TwoChannel, root: Path, cases=("phantom_000", "phantom_001"), skip=None) -> Path:
    """The demo cases as DICOM: DATA/CASE/t1/*.dcm, DATA/CASE/flair/*.dcm (one MR series each);
    `skip` (case, contrast) leaves that series out."""
    from ldmtool.io import read_volume
    from ldmtool.io.dicom_write import write_dicom_series

    for case in cases:
        for c, name in enumerate(CHANNELS):
            if (case, name) != skip:
                vol = read_volume(two.data / "imagesTr" / f"{case}_{c:04d}.nii.gz")
                write_dicom_series(vol, root / case / name, modality="MR", series_description=name)
    return root


def test_dicom_case_folders_with_a_series_per_contrast(two, cli, tmp_path):
    """Multi-contrast DICOM input: one series folder per contrast, named after it, is one case of
    several channels for the data-set loader, `segment` and `impute`."""
    data = _dicom_contrast_folders(two, tmp_path / "dicom")
    ds = load_dataset(data)
    assert [c.case_id for c in ds.cases] == ["phantom_000", "phantom_001"]
    assert ds.channel_list == ["flair", "t1"]  # folder names, alphabetical
    image, _ = ds.read(ds.cases[0])
    t1, _ = _nii(two.data / "imagesTr" / "phantom_000_0000.nii.gz")
    flair, _ = _nii(two.data / "imagesTr" / "phantom_000_0001.nii.gz")
    assert image.array.shape == (*t1.shape, 2)
    assert np.allclose(image.array[..., 1], t1, atol=1e-3 * np.abs(t1).max())
    assert np.allclose(image.array[..., 0], flair, atol=1e-3 * np.abs(flair).max())

    model = tmp_path / "SEG"
    _must("train-seg", two.data, "--out", model, "--config", TINY_YAML, "--dims", 2)
    r = cli("segment", data, "--model", model, "--out", tmp_path / "seg_dicom")
    assert r.code == 0, r.both
    r = cli("segment", two.data / "imagesTr", "--model", model, "--out", tmp_path / "seg_nii")
    assert r.code == 0, r.both
    for case in ("phantom_000", "phantom_001"):  # the model's channels matched by name, not position
        a, _ = _nii(tmp_path / "seg_dicom" / f"{case}_seg.nii.gz")
        b, _ = _nii(tmp_path / "seg_nii" / f"{case}_seg.nii.gz")
        assert a.shape == b.shape and (a == b).mean() > 0.99

    # FLAIR never acquired: the case folder holds the T1 series only
    lacking = _dicom_contrast_folders(two, tmp_path / "lacking", cases=("phantom_000",), skip=("phantom_000", "flair"))
    _one_error(cli("impute", lacking / "phantom_000", "--ae", two.ae, "--ldm", two.ldm, "--out", tmp_path / "x"),
               "case phantom_000 has no flair series folder", "--missing-channel flair")  # fmt: skip
    r = cli("impute", lacking / "phantom_000", "--ae", two.ae, "--ldm", two.ldm, "--out", tmp_path / "imp",
            "--missing-channel", "flair", "--samples", 2, "--steps", 3)  # fmt: skip
    assert r.code == 0, r.both
    t1_out, _ = _nii(tmp_path / "imp" / "phantom_000_imputed_0000.nii.gz")
    assert t1_out.shape == t1.shape and np.allclose(t1_out, t1, atol=1e-3 * np.abs(t1).max())
    assert _nii(tmp_path / "imp" / "phantom_000_missing_0001.nii.gz")[0].all()
    # in a data set, such a case lacks the contrast (the trainers take it as missing)
    _dicom_contrast_folders(two, tmp_path / "lacking", cases=("phantom_001",))
    ds = load_dataset(tmp_path / "lacking")
    assert ds.channel_list == ["flair", "t1"] and [c.absent for c in ds.cases] == [(0,), ()]


def test_train_on_dicom_contrast_folders(two, cli, tmp_path):
    """`train-ae` reads the contrast series as channels (named by their folders); a folder that mixes
    such cases with cases of one series is a one-line error."""
    data = _dicom_contrast_folders(two, tmp_path / "dicom")
    r = cli("train-ae", data, "--out", tmp_path / "AE", "--config", TINY_YAML, "--steps", 2)
    assert r.code == 0, r.both
    _, cfg = load_checkpoint(tmp_path / "AE")
    assert cfg["channel_names"] == ["flair", "t1"]
    from ldmtool.io import read_volume
    from ldmtool.io.dicom_write import write_dicom_series

    write_dicom_series(
        read_volume(two.data / "imagesTr" / "phantom_002_0000.nii.gz"), data / "phantom_002", modality="MR"
    )
    _one_error(
        cli("train-ae", data, "--out", tmp_path / "AE2", "--config", TINY_YAML, "--steps", 2),
        "mixes cases of one series (phantom_002/)",
        "phantom_000/flair, t1",
    )
