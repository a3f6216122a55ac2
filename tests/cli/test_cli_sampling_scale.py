"""Sampling at scale: samplers on the CLI, shards (explicit, SLURM, torchrun) that write exactly
what one run writes, resume after SIGKILL, the memory check, and the flow objective."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ldmtool.diffusion.resources import Shard, resolve_shard
from ldmtool.errors import LdmError
from ldmtool.io import read_nifti

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "examples" / "tiny.yaml"


def _files(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder)) for sub in ("imagesTr", "labelsTr", "provenance") for p in (folder / sub).iterdir()
    )


def _image(folder: Path, k: int) -> np.ndarray:
    return np.asarray(read_nifti(folder / "imagesTr" / f"synth_{k:05d}_0000.nii.gz").array)


def _sample(cli, trained, out, *extra):
    return cli("sample", "--ae", trained.ae, "--ldm", trained.ldm, "--out", out, "--steps", 3, *map(str, extra))


def test_two_shards_write_exactly_the_files_of_one_run(trained, cli, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert _sample(cli, trained, one, "--n", 5, "--batch-size", 2).code == 0
    r0 = _sample(cli, trained, two, "--n", 5, "--batch-size", 2, "--shard", "0/2")
    assert r0.code == 0, r0.both
    assert "belong to other shards" in r0.out
    # after shard 0 only the even samples exist
    assert sorted(p.name for p in (two / "provenance").iterdir()) == [f"synth_{k:05d}.json" for k in (0, 2, 4)]
    r1 = _sample(cli, trained, two, "--n", 5, "--batch-size", 2, "--shard", "1/2")
    assert r1.code == 0, r1.both
    assert _files(one) == _files(two)
    for k in range(5):
        a, b = _image(one, k), _image(two, k)
        np.testing.assert_allclose(a, b, atol=1e-4 * max(1.0, float(np.abs(a).max())), rtol=1e-4)
        pa = json.loads((one / "provenance" / f"synth_{k:05d}.json").read_text())
        pb = json.loads((two / "provenance" / f"synth_{k:05d}.json").read_text())
        assert pa["seed"] == pb["seed"] and pb["shard"] == f"{k % 2}/2"


def test_slurm_array_and_torchrun_environment(trained, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    out = tmp_path / "slurm"
    r = _sample(cli, trained, out, "--n", 5)
    assert r.code == 0, r.both
    assert sorted(p.name for p in (out / "provenance").iterdir()) == ["synth_00001.json", "synth_00004.json"]
    assert json.loads((out / "provenance" / "synth_00004.json").read_text())["shard"] == "1/3"

    assert resolve_shard(None, {"RANK": "1", "WORLD_SIZE": "2"}) == Shard(1, 2, "torchrun")
    assert resolve_shard(None, {"RANK": "0", "WORLD_SIZE": "1"}).count == 1
    assert resolve_shard("2/3", {"RANK": "1", "WORLD_SIZE": "2"}) == Shard(2, 3, "--shard")  # the flag wins
    assert resolve_shard(None, {}) == Shard()


@pytest.mark.parametrize("spec", ["2/2", "a/b", "1", "-1/2", "0/0"])
def test_bad_shard(spec):
    with pytest.raises(LdmError, match="shard"):
        resolve_shard(spec, {})


def test_bad_slurm_environment():
    with pytest.raises(LdmError, match="SLURM"):
        resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "2"})


@pytest.mark.slow  # over 10 s: runs in CI (.ci/run) and with --runslow
def test_resume_after_sigkill_loses_and_duplicates_nothing(trained, tmp_path):
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "ldmtool",
        "--quiet",
        "sample",
        "--ae",
        str(trained.ae),
        "--ldm",
        str(trained.ldm),
        "--out",
        str(out),
        "--n",
        "6",
        "--steps",
        "150",
        "--batch-size",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "provenance").is_dir() and any((out / "provenance").glob("synth_*.json")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (out / "provenance").glob("synth_*.json"))
    assert 1 <= len(done) < 6
    # every finished sample is complete and readable
    for name in done:
        prov = json.loads((out / "provenance" / name).read_text())
        for rel in prov["files"].values():
            assert read_nifti(out / rel).array.size > 0
    before = {name: (out / "provenance" / name).read_bytes() for name in done}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    after = sorted(p.name for p in (out / "provenance").glob("synth_*.json"))
    assert after == [f"synth_{k:05d}.json" for k in range(6)]
    assert {name: (out / "provenance" / name).read_bytes() for name in done} == before  # not rewritten
    assert not [p for p in out.rglob(".*tmp-*")]  # no temp files left behind
    assert len(list((out / "imagesTr").iterdir())) == 6 and len(list((out / "labelsTr").iterdir())) == 6


def test_memory_check_fails_before_any_work(trained, cli, tmp_path):
    out = tmp_path / "mem"
    r = _sample(cli, trained, out, "--n", 2, "--max-memory", "0.00001")
    assert r.code == 1
    assert "will not fit" in r.err and "--batch-size" in r.err
    assert len(r.error_lines()) == 1
    assert not (out / "provenance").exists() or not any((out / "provenance").iterdir())


@pytest.mark.parametrize(
    "sampler,extra",
    [("dpmpp2m", ()), ("unipc3", ()), ("ddim", ("--spacing", "linspace")), ("ddpm", ("--spacing", "leading"))],
)
def test_samplers_on_the_cli(trained, cli, tmp_path, sampler, extra):
    out = tmp_path / sampler
    r = _sample(cli, trained, out, "--n", 1, "--sampler", sampler, *extra)
    assert r.code == 0, r.both
    prov = json.loads((out / "provenance" / "synth_00000.json").read_text())
    assert prov["sampler"] == sampler and prov["steps"] == 3
    assert prov["spacing"] == (extra[1] if extra else "logsnr")  # the multistep solvers' own spacing
    assert prov["precision"] == "fp32" and "samples per second" in r.out
    assert np.isfinite(_image(out, 0)).all()


def test_euler_needs_a_flow_model(trained, cli, tmp_path):
    r = _sample(cli, trained, tmp_path / "e", "--n", 1, "--sampler", "euler")
    assert r.code == 1 and "--objective flow" in r.err


def test_flow_objective_end_to_end(trained, cli, tmp_path):
    ldm = tmp_path / "LDMF"
    r = cli(
        "--quiet",
        "train-ldm",
        trained.data,
        "--ae",
        trained.ae,
        "--out",
        ldm,
        "--config",
        TINY_YAML,
        "--objective",
        "flow",
        "--flow-timesteps",
        "logit-normal",
        "--steps",
        2,
    )
    assert r.code == 0, r.both
    from ldmtool.models.checkpoint import read_config

    assert read_config(ldm)["train"]["flow_timesteps"] == "logit-normal"
    out = tmp_path / "flow"
    r = cli("sample", "--ae", trained.ae, "--ldm", ldm, "--out", out, "--n", 1, "--steps", 4, "--sampler", "euler")
    assert r.code == 0, r.both
    assert np.isfinite(_image(out, 0)).all()
    r = cli("sample", "--ae", trained.ae, "--ldm", ldm, "--out", tmp_path / "f2", "--n", 1, "--sampler", "ddim")
    assert r.code == 1 and "--sampler euler" in r.err


def test_flow_timesteps_on_a_v_model_warns(trained, cli, tmp_path):
    r = cli(
        "train-ldm", trained.data, "--ae", trained.ae, "--out", tmp_path / "LV", "--config", TINY_YAML,
        "--flow-timesteps", "logit-normal", "--steps", 1,
    )  # fmt: skip
    assert r.code == 0, r.both
    assert "applies to --objective flow" in r.both and "uniform times" in r.both


def test_reject_memorized(trained, cli, tmp_path):
    # The real SSIM filter. Threshold 1.0 keeps every sample and records its score.
    out = tmp_path / "mem_ok"
    r = _sample(cli, trained, out, "--n", 2, "--reject-memorized", "1.0", "--train", trained.data)
    assert r.code == 0, r.both
    assert "rejected as near-copies" in r.out
    prov = json.loads((out / "provenance" / "synth_00000.json").read_text())
    assert prov["reject_memorized"] == 1.0 and -1.0 <= prov["memorization_ssim"] <= 1.0
    assert prov["rejected_candidates"] == 0 and prov["nearest_training_case"]

    r = _sample(cli, trained, tmp_path / "mem_notrain", "--n", 1, "--reject-memorized", "0.9")
    assert r.code == 1 and "--train" in r.err


def test_near_copies_are_rejected_and_replaced(trained, cli, tmp_path):
    # "Training set" = the very samples this command makes first (same seeds): every first
    # candidate is an exact copy and must be rejected; its replacement (the sample's next seed)
    # is written instead, and the rejection is counted in the provenance.
    from ldmtool.diffusion.samplers import sample_seed

    first = tmp_path / "first"
    assert _sample(cli, trained, first, "--n", 2, "--batch-size", 2).code == 0
    out = tmp_path / "filtered"
    r = _sample(cli, trained, out, "--n", 2, "--batch-size", 2, "--reject-memorized", "0.95", "--train", first)
    assert r.code == 0, r.both
    for k in range(2):
        prov = json.loads((out / "provenance" / f"synth_{k:05d}.json").read_text())
        assert prov["rejected_candidates"] >= 1
        assert prov["seed"] == sample_seed(0, k, prov["rejected_candidates"]) != sample_seed(0, k)
        assert prov["memorization_ssim"] <= 0.95
        assert np.abs(_image(out, k) - _image(first, k)).max() > 1e-3
    assert any("rejected as near-copies" in line and "2" in line for line in r.out.splitlines())


def test_keep_best_from_the_command_line(trained, cli, tmp_path):
    """`train-ldm --keep best`: the best and the latest EMA weights both written, the latest by
    step, a sample from each; an unknown choice is a one-line error."""
    from ldmtool.models.checkpoint import read_config

    ldm = tmp_path / "LDMB"
    r = cli("--quiet", "train-ldm", trained.data, "--ae", trained.ae, "--out", ldm, "--config", TINY_YAML,
            "--keep", "best", "--steps", 3)  # fmt: skip
    assert r.code == 0, r.both
    best, last = read_config(ldm / "model.safetensors"), read_config(ldm / "last.safetensors")
    assert best["train"]["keep"] == "best" and last["step"] == 3 and 1 <= best["step"] <= 3
    for weights, name in ((ldm, "b"), (ldm / "last.safetensors", "l")):
        r = cli("sample", "--ae", trained.ae, "--ldm", weights, "--out", tmp_path / name, "--n", 1, "--steps", 2)
        assert r.code == 0, r.both
    r = cli("train-ldm", trained.data, "--ae", trained.ae, "--out", tmp_path / "x", "--config", TINY_YAML,
            "--keep", "newest")  # fmt: skip
    assert r.code == 1 and len(r.error_lines()) == 1 and "keep must be one of" in r.err
