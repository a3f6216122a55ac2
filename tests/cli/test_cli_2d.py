"""2D images end to end: train-ae → train-ldm (a 2D denoiser) → sample PNG / DICOM, class
conditioning from class folders or a labels table, and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from ldmtool.cli.main import main
from ldmtool.models.checkpoint import load_checkpoint
from ldmtool.models.loaders import load_denoiser

TINY_YAML = Path(__file__).resolve().parents[2] / "examples" / "tiny.yaml"
TINY = ("--config", TINY_YAML, "--steps", 2)


def _images(root, classes=("normal", "pneumonia"), n=4, size=16):
    """Class folders of 8-bit grey blobs: left blob for the first class, right for the second."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            blob = 120 * np.exp(-((yy - size / 2) ** 2 + (xx - (4 + 8 * k)) ** 2) / 8)
            img = (60 + blob + rng.normal(0, 4, (size, size))).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"{i:03d}.png")
    return root


def _run(*args):
    assert main(["--quiet", *map(str, args)]) == 0, args


@pytest.fixture(scope="module")
def trained2d(tmp_path_factory):
    root = tmp_path_factory.mktemp("twod")
    data = _images(root / "data")
    _run("train-ae", data, "--out", root / "AE", "--config", TINY_YAML, "--intensity", "ct_window",
         "--ct-window", "127.5,255", "--steps", 2)  # fmt: skip
    _run("train-ldm", data, "--ae", root / "AE", "--out", root / "LDM", "--condition-on", "class", *TINY)
    return root


def test_checkpoints_say_2d(trained2d):
    _, ae_cfg = load_checkpoint(trained2d / "AE")
    assert ae_cfg["image_dims"] == 2 and ae_cfg["image_format"] == "png" and ae_cfg["image_dtype"] == "uint8"
    assert ae_cfg["volume_shape"] == [16, 16, 1] and ae_cfg["modality"] == "OT"
    model, cfg = load_denoiser(trained2d / "LDM" / "model.safetensors", "cpu")
    assert cfg["image_dims"] == 2 and model.unet.conv_in.spatial_dims == 2
    assert cfg.conditioning["classes"] == ["normal", "pneumonia"]
    assert cfg.attributes == ["class=normal", "class=pneumonia"]


def test_sample_png_per_class(trained2d, cli):
    out = trained2d / "S"
    r = cli("sample", "--ae", trained2d / "AE", "--ldm", trained2d / "LDM", "--out", out, "--n", 2, "--steps", 2,
            "--class", "pneumonia", "--guidance", 2)  # fmt: skip
    assert r.code == 0, r.both
    for k in range(2):
        img = np.asarray(Image.open(out / "imagesTr" / f"synth_{k:05d}_0000.png"))
        assert img.shape == (16, 16) and img.dtype == np.uint8
    prov = json.loads((out / "provenance" / "synth_00000.json").read_text())
    assert prov["conditions"] == {"class": "pneumonia"} and prov["format"] == "png"
    assert json.loads((out / "dataset.json").read_text())["file_ending"] == ".png"
    r = cli("sample", "--ae", trained2d / "AE", "--ldm", trained2d / "LDM", "--out", trained2d / "S2", "--n", 1,
            "--steps", 1, "--condition", "class=normal")  # fmt: skip
    assert r.code == 0, r.both


def test_sample_dicom_2d(trained2d, cli):
    out = trained2d / "D"
    r = cli("sample", "--ae", trained2d / "AE", "--ldm", trained2d / "LDM", "--out", out, "--n", 1, "--steps", 1,
            "--format", "dicom", "--class", "normal")  # fmt: skip
    assert r.code == 0, r.both
    ds = pydicom.dcmread(out / "dicom" / "synth_00000.dcm")
    assert (ds.Rows, ds.Columns) == (16, 16) and "SYNTHETIC" in ds.SeriesDescription and ds.PatientID == "SYNTHETIC"


def test_unknown_class_is_one_line(trained2d, cli):
    r = cli("sample", "--ae", trained2d / "AE", "--ldm", trained2d / "LDM", "--out", trained2d / "E", "--n", 1,
            "--steps", 1, "--class", "covid")  # fmt: skip
    lines = r.error_lines()
    assert r.code == 1 and len(lines) == 1 and "unknown class 'covid'" in lines[0] and "normal, pneumonia" in lines[0]


def test_classes_from_a_labels_table(trained2d, tmp_path):
    """A flat folder of images with a CSV of classes (more than two levels is fine)."""
    flat = tmp_path / "flat"
    flat.mkdir()
    rows = ["case,class"]
    for i, src in enumerate(sorted((trained2d / "data").rglob("*.png"))):
        (flat / f"img{i}.png").write_bytes(src.read_bytes())
        rows.append(f"img{i},{('a', 'b', 'c')[i % 3]}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    _run("train-ldm", flat, "--ae", trained2d / "AE", "--out", tmp_path / "LDM", "--condition-on", "class",
         "--covariates", tmp_path / "labels.csv", *TINY)  # fmt: skip
    _, cfg = load_checkpoint(tmp_path / "LDM")
    assert cfg["conditioning"]["classes"] == ["a", "b", "c"]


def test_rgb_where_grey_is_trained_is_one_line(tmp_path, cli):
    data = _images(tmp_path / "data", classes=("x",), n=2)
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(data / "x" / "colour.png")
    r = cli("train-ae", data, "--out", tmp_path / "AE", *TINY)
    lines = r.error_lines()
    assert r.code == 1 and len(lines) == 1 and "colour.png is a colour image" in lines[0], r.both
    assert "Traceback" not in r.both


def test_default_intensity_keeps_8bit_scale(tmp_path):
    from ldmtool.data.prepared import default_intensity

    data = _images(tmp_path / "data", classes=("x",), n=1)
    assert default_intensity(data) == {"intensity": "ct_window", "ct_window": [127.5, 255.0]}


def _dx(path, pixels):
    """A DX radiograph with identifiers (synthetic outputs must carry none of them)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID, ds.InstitutionName = "DX", "Doe^Jane", "MRN12345", "St Elsewhere"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PixelSpacing = [0.5, 0.5]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_radiographs_round_trip(tmp_path):
    """2D DICOM in → one synthetic DICOM file per sample out, Modality and spacing kept, no identifiers."""
    data = tmp_path / "dx"
    data.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        _dx(data / f"r{i}.dcm", rng.integers(500, 3000, (16, 16)))
    _run("train-ae", data, "--out", tmp_path / "AE", *TINY)
    _run("train-ldm", data, "--ae", tmp_path / "AE", "--out", tmp_path / "LDM", *TINY)
    _run("sample", "--ae", tmp_path / "AE", "--ldm", tmp_path / "LDM", "--out", tmp_path / "S", "--n", 1, "--steps", 1)
    ds = pydicom.dcmread(tmp_path / "S" / "dicom" / "synth_00000.dcm")
    assert ds.Modality == "DX" and [float(v) for v in ds.PixelSpacing] == [0.5, 0.5]
    text = str(ds)
    assert not any(v in text for v in ("Doe^Jane", "MRN12345", "St Elsewhere"))


def _nnunet_2d(root: Path, width: int) -> Path:
    """imagesTr/c{i}_0000.png + labelsTr/c{i}.png (16 × width, a disc moving right) and dataset.json."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    yy, xx = np.mgrid[:16, :width]
    for i in range(6):
        mask = ((yy - 8) ** 2 + (xx - 5 - i) ** 2 < 12).astype(np.uint8)
        Image.fromarray((50 + 150 * mask).astype(np.uint8)).save(root / "imagesTr" / f"c{i}_0000.png")
        Image.fromarray(mask).save(root / "labelsTr" / f"c{i}.png")
    info = {"channel_names": {"0": "X-ray"}, "labels": {"background": 0, "lesion": 1}, "file_ending": ".png"}
    (root / "dataset.json").write_text(json.dumps(info))
    return root


def test_nnunet_2d_with_labels(tmp_path):
    """imagesTr/CASE_0000.png + labelsTr/CASE.png: image + label PNGs sampled together."""
    root = _nnunet_2d(tmp_path / "ds", width=16)
    _run("train-ae", root, "--out", tmp_path / "AE", *TINY)
    _run("train-ldm", root, "--ae", tmp_path / "AE", "--out", tmp_path / "LDM", *TINY)
    _run("sample", "--ae", tmp_path / "AE", "--ldm", tmp_path / "LDM", "--out", tmp_path / "S", "--n", 1, "--steps", 1)
    label = np.asarray(Image.open(tmp_path / "S" / "labelsTr" / "synth_00000.png"))
    assert label.shape == (16, 16) and set(np.unique(label)) <= {0, 1}


def test_2d_data_on_a_3d_autoencoder_is_one_line(trained, tmp_path, cli):
    data = _images(tmp_path / "data", classes=("x",), n=2)
    r = cli("train-ldm", data, "--ae", trained.ae, "--out", tmp_path / "L", *TINY)
    lines = r.error_lines()
    assert (
        r.code == 1 and len(lines) == 1 and "holds 2D images but the autoencoder was trained on 3D volumes" in lines[0]
    )


def test_impute_and_inpaint_a_picture(trained2d, tmp_path, cli):
    """impute / inpaint of a PNG write PNGs as the input is (8-bit, its pixel layout), the known
    pixels bit for bit the input's."""
    src = trained2d / "data" / "normal" / "001.png"
    given = np.asarray(Image.open(src))
    models = ("--ae", trained2d / "AE", "--ldm", trained2d / "LDM", "--steps", 2)
    r = cli("impute", src, *models, "--out", tmp_path / "I", "--simulate-mcar", "0.5", "--samples", 2)
    assert r.code == 0, r.both
    imputed = np.asarray(Image.open(tmp_path / "I" / "001_imputed.png"))
    missing = np.asarray(Image.open(tmp_path / "I" / "001_missing.png")).astype(bool)
    assert imputed.dtype == np.uint8 and imputed.shape == given.shape == missing.shape
    assert 0.3 < missing.mean() < 0.7 and np.array_equal(imputed[~missing], given[~missing])
    assert (tmp_path / "I" / "001_std.nii.gz").is_file()  # a float map stays NIfTI
    region = np.zeros(given.shape, np.uint8)
    region[4:10, 3:9] = 1
    Image.fromarray(region).save(tmp_path / "region.png")
    r = cli("inpaint", src, "--region", tmp_path / "region.png", *models, "--out", tmp_path / "P")
    assert r.code == 0, r.both
    inpainted = np.asarray(Image.open(tmp_path / "P" / "001_inpainted.png"))
    inside = region.astype(bool)
    assert inpainted.dtype == np.uint8 and np.array_equal(inpainted[~inside], given[~inside])
    assert not np.array_equal(inpainted[inside], given[inside])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "P" / "001_region.png")), region)
    seam = json.loads((tmp_path / "P" / "001_inpaint.json").read_text())["seam"]
    assert np.isfinite(seam["border_gradient"]) and seam["tissue_gradient_p95"] > 0


def _parts(root: Path, n: int, defects: bool, seed: int) -> Path:
    """nnU-Net 2D folder of 32 × 32 pictures of a bright elliptic part (label 1) on a dark ground;
    with `defects`, each part carries one brighter round defect (label 2) at a random place."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    yy, xx = np.mgrid[:32, :32]
    part = (yy - 16) ** 2 / 140 + (xx - 16) ** 2 / 180 < 1
    for i in range(n):
        label, image = part.astype(np.uint8), 40 + 120 * part + rng.normal(0, 5, (32, 32))
        if defects:
            cy, cx = rng.integers(11, 21, 2)
            spot = ((yy - cy) ** 2 + (xx - cx) ** 2 < 6) & part
            label[spot], image[spot] = 2, 230
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / "imagesTr" / f"p{seed}{i:02d}_0000.png")
        Image.fromarray(label).save(root / "labelsTr" / f"p{seed}{i:02d}.png")
    info = {"channel_names": {"0": "photo"}, "labels": {"background": 0, "part": 1, "defect": 2}, "file_ending": ".png"}
    (root / "dataset.json").write_text(json.dumps(info))
    return root


def test_fewshot_defects_on_pictures(tmp_path, cli):
    """The few-shot path on 2D pictures: a map-conditioned denoiser of defect-free parts, fine-tuned
    (`train-ldm --init`) on 3 pictures with defects, paints a defect of one of them into a
    defect-free picture (`inpaint --lesion-from`): a PNG, the pixels outside the moved defect the
    input's, the label PNG the input's map with the defect where it landed."""
    normal, few = _parts(tmp_path / "normal", 8, False, 0), _parts(tmp_path / "few", 3, True, 1)
    _run("train-ae", normal, "--out", tmp_path / "AE", *TINY)
    _run("train-ldm", normal, "--ae", tmp_path / "AE", "--out", tmp_path / "N", "--condition-on", "labels", *TINY)
    _run("train-ldm", few, "--ae", tmp_path / "AE", "--out", tmp_path / "F", "--condition-on", "labels",
         "--init", tmp_path / "N", *TINY)  # fmt: skip
    host, donor = normal / "imagesTr" / "p000_0000.png", few / "imagesTr" / "p100_0000.png"
    r = cli("inpaint", host, "--lesion-from", donor, "--lesion-labels", few / "labelsTr" / "p100.png",
            "--label", "defect", "--labels", normal / "labelsTr" / "p000.png", "--ae", tmp_path / "AE",
            "--ldm", tmp_path / "F", "--steps", 2, "--out", tmp_path / "P")  # fmt: skip
    assert r.code == 0, r.both
    given, painted = np.asarray(Image.open(host)), np.asarray(Image.open(tmp_path / "P" / "p000_inpainted.png"))
    region = np.asarray(Image.open(tmp_path / "P" / "p000_region.png")).astype(bool)
    label = np.asarray(Image.open(tmp_path / "P" / "p000_inpainted_label.png"))
    donor_defect = int((np.asarray(Image.open(few / "labelsTr" / "p100.png")) == 2).sum())
    assert painted.dtype == np.uint8 and painted.shape == given.shape == (32, 32)
    assert region.sum() == donor_defect > 0 and np.array_equal(painted[~region], given[~region])
    assert np.array_equal(label == 2, region)
    assert np.array_equal(label[~region], np.asarray(Image.open(normal / "labelsTr" / "p000.png"))[~region])
    record = json.loads((tmp_path / "P" / "p000_inpaint.json").read_text())
    assert len(record["lesions_moved"]) == 1 and record["lesions_left_out"] == 0


def test_segment_pictures(tmp_path, cli):
    """train-seg on 2D PNGs, then segment a folder of them: one label PNG per picture."""
    root = _nnunet_2d(tmp_path / "ds", width=20)
    r = cli("train-seg", root, "--out", tmp_path / "seg", "--config", TINY_YAML, "--steps", 3)
    assert r.code == 0, r.both
    r = cli("segment", root / "imagesTr", "--model", tmp_path / "seg", "--out", tmp_path / "out")
    assert r.code == 0, r.both
    written = sorted(p.name for p in (tmp_path / "out").glob("*_seg.png"))
    assert written == [f"c{i}_seg.png" for i in range(6)]
    seg = np.asarray(Image.open(tmp_path / "out" / "c2_seg.png"))
    assert seg.shape == (16, 20) and seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 1}


def test_evaluate_class_samples_of_two_folders(trained2d, tmp_path, cli):
    """`sample --class` once per class, both folders judged as one set: classes from the class
    folders and the samples' provenance, a 2D classifier, one view, 2D SSIM."""
    syn = []
    for cls in ("normal", "pneumonia"):
        syn += ["--synthetic", tmp_path / f"S_{cls}"]
        _run("sample", "--ae", trained2d / "AE", "--ldm", trained2d / "LDM", "--out", tmp_path / f"S_{cls}",
             "--n", 4, "--steps", 2, "--class", cls)  # fmt: skip
    test = _images(tmp_path / "test", n=3)
    r = cli("evaluate", "--real", trained2d / "data", *syn, "--train", trained2d / "data", "--test", test,
            "--out", tmp_path / "R", "--only", "fidelity,diversity,speed,utility,privacy", "--seg-steps", 3,
            "--image-size", 64, "--q", 4, "--repeats", 1, "--audit-steps", 2)  # fmt: skip
    assert r.code == 0, r.both
    report = json.loads((tmp_path / "R" / "report.json").read_text())
    assert report["settings"]["views"] == ["axial"] and report["settings"]["slices_per_view"] == 1
    assert report["fidelity"]["synthetic_points"] == 8 and report["fidelity"]["real_points"] == 8
    util = report["utility"]
    assert util["task"] == "classification" and util["classes"] == ["normal", "pneumonia"]
    assert util["model"] == "MONAI Classifier (2D)" and util["n_test"] == 6
    assert report["privacy"]["ssim_window"] == 11
    assert report["inputs"]["synthetic"]["n"] == 8 and "S_pneumonia" in report["inputs"]["synthetic"]["path"]
    assert report["diversity"]["pairwise_ms_ssim_synthetic"]["value"] is not None
    assert report["speed"]["n_samples"] == 8
    ids = {p["synthetic"] for p in report["privacy"]["per_sample"]}  # ids repeat across the folders
    assert ids <= {f"S_{c}/synth_{k:05d}" for c in ("normal", "pneumonia") for k in range(4)}
    r = cli("evaluate", "--real", trained2d / "data", *syn[:2], *syn[:2], "--out", tmp_path / "R2")
    lines = r.error_lines()
    assert r.code == 1 and len(lines) == 1 and "is given twice" in lines[0], r.both


def test_reject_memorized_pictures(trained2d, tmp_path, cli):
    """`sample --reject-memorized` with a 2D model and a folder of PNGs as the training set: every
    sample is scored against them and records its nearest. (This barely trained model's images span
    a few grey levels, which the 8-bit PNGs flatten, so neither the score nor which draw is nearest
    says much here; `test_memorization_filter_on_pictures` checks the 2D scores.)"""
    common = ("--ae", trained2d / "AE", "--ldm", trained2d / "LDM", "--n", 2, "--steps", 2, "--class", "normal")
    first = tmp_path / "first"
    assert cli("sample", *common, "--out", first).code == 0
    out = tmp_path / "filtered"
    r = cli("sample", *common, "--out", out, "--reject-memorized", "0.999", "--train", first / "imagesTr")
    assert r.code == 0, r.both
    for k in range(2):
        prov = json.loads((out / "provenance" / f"synth_{k:05d}.json").read_text())
        assert prov["rejected_candidates"] == 0 and prov["nearest_training_case"] in (
            "synth_00000_0000",
            "synth_00001_0000",
        )
        assert 0 < prov["memorization_ssim"] < 0.999
        assert np.asarray(Image.open(out / "imagesTr" / f"synth_{k:05d}_0000.png")).shape == (16, 16)


def test_memorization_filter_on_pictures():
    """A copy of a training image scores SSIM 1 (2D window, not one pixel) and an unrelated image
    far less; a slightly noisy copy stays near 1."""
    from ldmtool.evaluate.privacy import MemorizationFilter

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    train = np.stack([np.exp(-((yy - 8 - 4 * i) ** 2 + (xx - 16) ** 2) / 20)[..., None] for i in range(4)])
    filt = MemorizationFilter(train.astype(np.float32), 0.9, candidates=None)
    copy = filt.check(train[2])
    noisy = filt.check(train[1] + rng.normal(0, 0.002, train[1].shape))
    other = filt.check(rng.random((32, 32, 1)))
    assert copy.score == pytest.approx(1.0, abs=1e-5) and copy.nearest == "train_2" and copy.reject
    assert noisy.nearest == "train_1" and noisy.score > 0.8
    assert other.score < 0.3 and not other.reject
