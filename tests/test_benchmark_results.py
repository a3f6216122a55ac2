"""benchmarks/_results.py: every benchmark's results file carries its provenance stamp."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results():
    spec = importlib.util.spec_from_file_location("bench_results", REPO / "benchmarks" / "_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recorded_run_writes_stamped_file(results, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / "demo.py"), "--steps", "3"])
    with results.recorded("demo", directory=tmp_path):
        print("| a | b |\n|---|---|\n| 1 | 2 |")
        print("\x1b[1mbold\x1b[0m")
    assert "| 1 | 2 |" in capsys.readouterr().out  # still shown
    (path,) = tmp_path.glob("demo-*.md")
    text = path.read_text()
    assert text.startswith("# benchmarks/demo.py results")
    command = "- command: `python benchmarks/demo.py --steps 3`"
    for field in ("- commit: ", "- date: ", "- machine: ", "CPUs", "torch ", command):
        assert field in text
    assert "| 1 | 2 |" in text and "bold" in text and "\x1b" not in text


def test_failed_or_disabled_run_writes_nothing(results, tmp_path):
    with pytest.raises(RuntimeError):
        with results.recorded("demo", directory=tmp_path):
            print("partial")
            raise RuntimeError("boom")
    with results.recorded("demo", enabled=False, directory=tmp_path):
        print("probe")
    assert not list(tmp_path.iterdir())


def test_commit_names_head(results):
    c = results.commit()
    assert c == "unknown" or len(c.removesuffix("+dirty")) == 40


def test_every_benchmark_writes_through_the_helper():
    scripts = [p for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_")]
    assert scripts
    for p in scripts:
        assert f'recorded("{p.stem}"' in p.read_text(), f"{p.name} does not write its results file via recorded()"


def test_real_data_benchmark_without_data_says_so_and_exits_0(tmp_path):
    import subprocess

    env = {"LDMTOOL_RESULTS_DIR": str(tmp_path / "results"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "real_data.py"), "--data", str(tmp_path / "absent")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "real data not found" in proc.stdout and str(tmp_path / "absent") in proc.stdout
    assert not any((tmp_path / "absent").parent.glob("ldmtool-real-*"))


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("evaluate_scale.py", ["--ixi"], "IXI brains not found"),
        ("series.py", ["--data"], ""),
    ],
)
def test_data_benchmarks_without_data_exit_0_and_write_nothing(tmp_path, script, args, message):
    import subprocess

    env = {"LDMTOOL_RESULTS_DIR": str(tmp_path / "results"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args, str(tmp_path / "absent")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert message in proc.stdout + proc.stderr and str(tmp_path / "absent") in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_real_data_links_a_kept_work_folder_again(tmp_path):
    """link_subset on a folder an earlier run (or --aug-reuse) left: the same links are kept, no error."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from real_data import link_subset
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    src = tmp_path / "src"
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir()
    for c in ("a", "b"):
        (src / "imagesTr" / f"{c}_0000.nii.gz").write_bytes(b"image " + c.encode())
    (src / "labelsTr" / "a.nii.gz").write_bytes(b"label a")  # b has no label
    for _ in range(2):
        dst = link_subset(src, tmp_path / "dst", ["a", "b"])
    assert sorted(p.name for p in (dst / "imagesTr").iterdir()) == ["a_0000.nii.gz", "b_0000.nii.gz"]
    assert [p.name for p in (dst / "labelsTr").iterdir()] == ["a.nii.gz"]
    assert (dst / "imagesTr" / "b_0000.nii.gz").read_bytes() == b"image b"


def test_real_data_label_sampling_splits_the_images_between_maps_and_deformations():
    """The labels generator's `sample --labels` options: --aug-undeformed-share of each map's images of
    the map itself, the rest deformed, as many in all as the largest ratio needs."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from real_data import label_sampling, parse
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert parse(["--only", "augment"]).aug_undeformed_share == [0.5]  # the default
    assert parse(["--aug-undeformed-share", "0,0.5"]).aug_undeformed_share == [0.0, 0.5]
    assert label_sampling(100, 10, 0.5) == ["--deform", 5, "--undeformed", 5]
    assert label_sampling(250, 50, 0.5) == ["--deform", 2, "--undeformed", 3]
    assert label_sampling(10, 10, 0.5) == ["--per-label", 1]  # one image per map: the map itself
    assert label_sampling(95, 10, 0.0) == ["--deform", 10]
    assert label_sampling(20, 10, 1.0) == ["--per-label", 2]
    with pytest.raises(SystemExit):
        parse(["--aug-undeformed-share", "0.5,1.5"])


def test_real_data_generator_budget_in_minutes_or_steps():
    """--aug-gen-steps AE,LDM trains the augment generators for a number of steps (the same models on
    any machine) instead of --aug-gen-minutes of wall time; bad values stop argument parsing."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from real_data import generator_budget_text, generator_budgets, parse
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    minutes = parse(["--only", "augment", "--aug-gen-minutes", "24"])
    assert generator_budgets(minutes) == (["--max-minutes", 24.0], ["--max-minutes", 24.0])
    assert generator_budget_text(minutes) == "train-ae + train-ldm, 24 + 24 min per N"
    steps = parse(["--only", "augment", "--aug-gen-steps", "3900,2_100"])
    assert generator_budgets(steps) == (["--steps", 3900], ["--steps", 2100])
    assert generator_budget_text(steps) == "train-ae 3,900 + train-ldm 2,100 steps per N"
    for bad in ("3900", "3900,0", "3900,2100,5", "a,b", "-1,5"):
        with pytest.raises(SystemExit):
            parse(["--aug-gen-steps", bad])


def test_real_data_label_detail_generators_share_the_autoencoder(tmp_path):
    """--aug-modes labels,labels:4: the second generator links the first's autoencoder and trains its
    denoiser with --label-detail 4; bad modes stop argument parsing."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from real_data import _generator, parse
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    args = parse(["--only", "augment", "--aug-modes", "labels,labels:4", "--aug-gen-steps", "10,20"])
    assert args.aug_modes == ["labels", "labels:4"]
    calls = []

    def run(*cmd):
        calls.append([str(c) for c in cmd])
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "state.json").write_text('{"step": 1}')
        return 1.0

    first = _generator(run, tmp_path / "real", tmp_path / "labels", tmp_path / "cfg.yaml", "labels", args, None)
    second = _generator(
        run,
        tmp_path / "real",
        tmp_path / "labels-d4",
        tmp_path / "cfg.yaml",
        "labels:4",
        args,
        tmp_path / "labels" / "ae",
    )
    assert set(first) == {"train-ae", "train-ldm"} and set(second) == {"train-ldm"}
    assert [c[0] for c in calls] == ["train-ae", "train-ldm", "train-ldm"]
    assert "--label-detail" not in calls[1] and calls[2][calls[2].index("--label-detail") + 1] == "4"
    assert (tmp_path / "labels-d4" / "ae").resolve() == (tmp_path / "labels" / "ae").resolve()
    for bad in ("labels:x", "labels:0", "masks"):
        with pytest.raises(SystemExit):
            parse(["--aug-modes", bad])
