"""`ldmtool distill`: rounds of progressive distillation into an ordinary checkpoint that `sample`
uses with the DDIM steps it was distilled for."""

import json

from ldmtool.models.checkpoint import file_sha256


def test_distill_then_sample_on_its_grid(cli, trained, tmp_path):
    out = tmp_path / "LDM2"
    r = cli(
        "--quiet", "distill", trained.data, "--ae", trained.ae, "--ldm", trained.ldm, "--out", out,
        "--steps", 2, "--teacher-steps", 8, "--train-steps", 2, "--batch-size", 2,
    )  # fmt: skip
    assert r.code == 0, r.both
    cfg = json.loads((out / "config.json").read_text())
    record = cfg["distillation"]
    assert record["steps"] == 2 and record["rounds"] == [4, 2] and record["sampler"] == "ddim"
    assert record["original_sha256"] == file_sha256(trained.ldm / "model.safetensors")
    assert record["teacher_sha256"] == file_sha256(out / "rounds" / "4-steps" / "model.safetensors")
    for n in (4, 2):
        history = json.loads((out / "rounds" / f"{n}-steps" / "history.json").read_text())
        assert history[-1]["step"] == 2
    # the student differs from its teacher: it was trained
    assert file_sha256(out / "model.safetensors") != file_sha256(trained.ldm / "model.safetensors")

    s = tmp_path / "S"
    r = cli("--quiet", "sample", "--ae", trained.ae, "--ldm", out, "--out", s, "--n", 1)
    assert r.code == 0, r.both
    prov = json.loads((s / "provenance" / "synth_00000.json").read_text())
    assert (prov["sampler"], prov["steps"], prov["spacing"], prov["eta"]) == ("ddim", 2, "trailing", 0.0)

    s2 = tmp_path / "S2"
    r = cli("sample", "--ae", trained.ae, "--ldm", out, "--out", s2, "--n", 1, "--steps", 3)
    assert r.code == 0, r.both
    assert "distilled for 2 DDIM steps" in r.both
    assert json.loads((s2 / "provenance" / "synth_00000.json").read_text())["steps"] == 3


def test_distill_bad_input_is_one_line(cli, trained, tmp_path):
    r = cli(
        "distill",
        trained.data,
        "--ae",
        trained.ae,
        "--ldm",
        trained.ldm,
        "--out",
        tmp_path / "X",
        "--steps",
        3,
        "--teacher-steps",
        8,
    )
    assert r.code != 0 and len(r.error_lines()) == 1 and "power of two" in r.err
    r = cli("distill", trained.data, "--ae", trained.ae, "--ldm", tmp_path / "none", "--out", tmp_path / "X")
    assert r.code != 0 and len(r.error_lines()) == 1
    r = cli("distill", trained.data, "--ae", trained.ae, "--ldm", trained.ldm, "--out", tmp_path / "Y", "--resume")
    assert r.code != 0 and len(r.error_lines()) == 1 and "no distillation state" in r.err
