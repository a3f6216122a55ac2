"""Sampling benchmark: overhead, a plain MONAI loop side by side, quality vs steps, depth scaling.

    python benchmarks/sampling.py --ae demo_out/ae --ldm demo_out/ldm      # after `make demo`
    python benchmarks/sampling.py --parts a,b --steps 20                   # a subset
    python benchmarks/sampling.py --parts c --solvers ddim,unipc2 --calls 8 50   # part of (c)
    python benchmarks/sampling.py --parts c --distilled LDM4 LDM8   # + `ldmtool distill` outputs

(a) overhead: `ldmtool sample`'s time per batch (noise → sampler → decode → files written) divided by
    the physical floor steps × (one denoiser call) + (one full decode), all measured in this run.
(b) the same weights, steps and batch through a plain loop over MONAI's LatentDiffusionInferer with
    its DDIMScheduler (decoding every slice of the batch at once): seconds per volume, ratio.
(c) quality vs denoiser calls: Fréchet distance between per-slice latent features (channel means
    and standard deviations of each latent slice) of every sampler (--solvers, each at its own
    "auto" timestep spacing) at 4/6/8/10/20/50 calls (--calls) and a 1000-step DDPM reference set,
    64 samples each (--quality-n); 95% bootstrap intervals resampling whole volumes of both sets,
    and the paired interval of each distance minus DDIM-50's (all samplers share their seeds);
    also each set against the real training latents. Sampling cost is denoiser calls: every
    sampler here makes one call per step. A deterministic reference (--reference-sampler unipc3
    --reference-steps 100: the converged probability-flow ODE) shares the samplers' seeds, so each
    sample's distance to its own exact answer (RMSE) measures the solver's error directly.
(d) depth scaling: seconds and peak RSS of decoding one volume of depth D = 32..256 slice by slice
    (this package) vs a MONAI 3D AutoencoderKL of the same widths decoding the same volume, each
    measured in a fresh process.
(e) startup: `ldmtool sample --n 1` as a user runs it (the installed `ldmtool` script, a fresh
    process each time, --startup-runs times): its wall time beside the seconds it reports (sampling
    and writing), and what a fresh process pays before any work: Python itself, `import torch`,
    `import monai` (MONAI's package import loads all of its submodules), the CLI's own imports.

Prints tables; numbers are only comparable within one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console(width=220)  # the results file keeps whole table rows, whatever the terminal


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timeit(fn, device: torch.device, repeat: int = 3) -> float:
    """Median seconds of `fn()` after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def load(args, device):
    from ldmtool.pipelines.latent_diffusion import LatentDiffusionPipeline

    return LatentDiffusionPipeline.from_pretrained(Path(args.ae), Path(args.ldm), device=device)


def part_a_b(args, device, pipe, parts: set[str]) -> list[tuple]:
    from monai.inferers import LatentDiffusionInferer
    from monai.networks.schedulers import DDIMScheduler

    from ldmtool.models.position import slice_positions
    from ldmtool.pipelines.generate import generate
    from ldmtool.runtime import autocast

    ae, ldm = pipe.ae, pipe.ldm
    b, steps = args.batch_size, args.steps
    shape = pipe.latent_shape
    mean, std = pipe.latent_mean, pipe.latent_std
    x = torch.randn((b, *shape), device=device)
    t = torch.full((b,), 500, dtype=torch.long, device=device)
    precision = "bf16" if device.type == "cuda" else "fp32"

    def fwd():
        with torch.inference_mode(), autocast(device, precision):
            ldm(x, t)

    def dec():
        pipe.decode(x, args.decode_batch)

    t_fwd, t_dec = _timeit(fwd, device), _timeit(dec, device)
    floor = steps * t_fwd + t_dec
    rows = []
    n = b * args.batches
    with tempfile.TemporaryDirectory() as tmp:
        generate(
            Path(args.ae),
            Path(args.ldm),
            Path(tmp) / "warm",
            n=b,
            steps=2,
            batch_size=b,
            decode_batch=args.decode_batch,
            device=device,
            seed=99,
        )  # warm-up (allocator, caches)
        res = generate(
            Path(args.ae),
            Path(args.ldm),
            Path(tmp) / "s",
            n=n,
            sampler="ddim",
            steps=steps,
            batch_size=b,
            decode_batch=args.decode_batch,
            device=device,
            seed=1,
        )
    per_batch = res.seconds / args.batches
    ours_per_volume = res.seconds / n
    smp = pipe.make_sampler("ddim", steps)

    def loop():  # what `sample` does per batch, without writing files
        pipe.sample(list(range(b)), sampler=smp, decode_batch=args.decode_batch)

    loop_per_volume = _timeit(loop, device, repeat=args.batches) / b
    if "a" in parts:
        rows.append(("a", f"one denoiser call, batch {b}", f"{t_fwd:.4f} s", ""))
        rows.append(("a", f"one full decode, batch {b} (decode batch {args.decode_batch})", f"{t_dec:.4f} s", ""))
        rows.append(("a", f"floor = {steps} × call + decode", f"{floor:.3f} s", ""))
        rows.append(
            (
                "a",
                "ldmtool sample, per batch (files written)",
                f"{per_batch:.3f} s",
                f"overhead ratio {per_batch / floor:.3f} (target ≤ 1.10)",
            )
        )
    if "b" in parts:
        dcfg = pipe.ldm_config.model

        class Decoder(torch.nn.Module):
            """MONAI's inferer calls decode_stage_2_outputs(z): decode every slice at once."""

            def __init__(self):
                super().__init__()
                self.ae = ae

            def decode_stage_2_outputs(self, z):
                z = z * std + mean
                bb, c, d = z.shape[:3]
                flat = z.transpose(1, 2).reshape(bb * d, c, *z.shape[3:])
                return self.ae.decode(flat, slice_positions(d, device).repeat(bb))

        class Denoiser(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.ldm = ldm

            def forward(self, x, timesteps, context=None):
                return self.ldm(x, timesteps.long().expand(x.shape[0]))

        sched = DDIMScheduler(
            num_train_timesteps=dcfg.num_train_timesteps,
            schedule=dcfg.schedule,
            prediction_type=dcfg.prediction_type,
            clip_sample=False,
            **dcfg.schedule_args(),
        )
        sched.set_timesteps(steps)
        inferer = LatentDiffusionInferer(sched, scale_factor=1.0)
        dn, de = Denoiser().eval(), Decoder().eval()

        def monai_batch():
            with autocast(device, precision):
                noise = torch.randn((b, *shape), device=device)
                out = inferer.sample(
                    input_noise=noise, autoencoder_model=de, diffusion_model=dn, scheduler=sched, verbose=False
                )
                out.float().cpu()

        monai_batch()  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.batches):
            monai_batch()
        _sync(device)
        monai_per_volume = (time.perf_counter() - t0) / n
        rows.append(
            (
                "b",
                "MONAI LatentDiffusionInferer + DDIMScheduler, per volume (no files)",
                f"{monai_per_volume:.3f} s",
                "",
            )
        )
        rows.append(
            (
                "b",
                "ldmtool sampler + decode, per volume (no files)",
                f"{loop_per_volume:.3f} s",
                f"ldmtool/MONAI = {loop_per_volume / monai_per_volume:.3f} (target ≤ 1)",
            )
        )
        rows.append(
            (
                "b",
                "ldmtool sample, per volume (files written)",
                f"{ours_per_volume:.3f} s",
                f"ldmtool/MONAI = {ours_per_volume / monai_per_volume:.3f}",
            )
        )
    return rows


def slice_features(z: torch.Tensor) -> np.ndarray:
    """(B, L, D, h, w) → (B·D, 2L): per latent slice, channel means and standard deviations."""
    flat = z.float().transpose(1, 2).flatten(3)  # (B, D, L, h·w)
    f = torch.cat([flat.mean(-1), flat.std(-1)], -1)
    return f.reshape(-1, f.shape[-1]).cpu().numpy().astype(np.float64)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def bootstrap_frechet(
    sets: dict[str, np.ndarray], ref: np.ndarray, per: int, reps: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Bootstrap replicates of each set's Fréchet distance to `ref`: whole volumes (their `per`
    slices together) of both the set and the reference are resampled with replacement. Every set
    uses the same resampled indices in a replicate: the sets share their seeds (sample k of every
    sampler starts from the same noise), so differences between sets are paired."""
    rng = np.random.default_rng(seed)
    n_vol, n_ref = len(next(iter(sets.values()))) // per, len(ref) // per
    out = {k: np.empty(reps) for k in sets}
    ref_vols = ref.reshape(n_ref, per, -1)
    for r in range(reps):
        ia, ir = rng.integers(0, n_vol, n_vol), rng.integers(0, n_ref, n_ref)
        ref_b = ref_vols[ir].reshape(-1, ref.shape[-1])
        for k, f in sets.items():
            out[k][r] = frechet(f.reshape(n_vol, per, -1)[ia].reshape(-1, f.shape[-1]), ref_b)
    return out


def _interval(values: np.ndarray) -> str:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return f"[{lo:.4f}, {hi:.4f}]"


def part_c(args, device, pipe) -> list[tuple]:
    """Every sampler at every count of denoiser calls, against a DDPM reference set (module docstring)."""
    from ldmtool.diffusion.samplers import sample_seed
    from ldmtool.models.denoiser import guided

    depth = pipe.latent_shape[1]
    n, bs = args.quality_n, args.quality_batch

    def run(name, steps, seed, spacing="auto", on=pipe):
        smp = on.make_sampler(name, steps, spacing=spacing)
        outs, zs = [], []
        t0 = time.perf_counter()
        for b0 in range(0, n, bs):
            idx = list(range(b0, min(b0 + bs, n)))
            with torch.inference_mode():  # fp32: the latents themselves are compared
                z = on.denoise([sample_seed(seed, k) for k in idx], smp, guided(on.ldm, None, None))
                outs.append(slice_features(z))
                zs.append(z.float().cpu())
        return np.concatenate(outs), (time.perf_counter() - t0) / n, smp.spacing, torch.cat(zs)

    cache = (
        Path(args.ldm) / "latents.safetensors"
        if Path(args.ldm).is_dir()
        else Path(args.ldm).parent / "latents.safetensors"
    )
    real = None
    if cache.is_file():
        from safetensors.torch import load_file

        lat = load_file(str(cache))["latents"].float()
        m, s = pipe.latent_mean.cpu(), pipe.latent_std.cpu()
        real = slice_features((lat - m) / s)
    ref_name = args.reference_sampler
    paired = ref_name != "ddpm"
    console.print(f"(c) reference: {ref_name} {args.reference_steps} steps × {n} samples ...")
    # a deterministic reference shares the samplers' seeds: each sample then has its own exact answer
    ref_f, ref_sec, _, ref_z = run(ref_name, args.reference_steps, seed=3000 if paired else 1000)
    objective = pipe.ldm_config.model.objective
    solvers = [s for s in args.solvers.split(",") if (s == "euler") == (objective == "flow")]
    sets, info, rmse = {}, {}, {}
    if args.reference_twice:
        sets["ref-floor"], sec, _, _ = run(ref_name, args.reference_steps, seed=2000)
        info["ref-floor"] = (f"{ref_name} (second seed set): noise floor", args.reference_steps, "", sec)
    runs = [(name, calls) for name in solvers for calls in args.calls]
    if "ddim" in solvers and args.baseline_steps not in args.calls:
        runs.insert(0, ("ddim", args.baseline_steps))
    for name, calls in runs:
        console.print(f"(c) {name}, {calls} calls ...")
        key = f"{name}-{calls}"
        sets[key], sec, spacing, z = run(name, calls, seed=3000, spacing="auto" if name == "ddim" else args.spacing)
        info[key] = (name, calls, spacing, sec)
        rmse[key] = f"{float((z - ref_z).pow(2).mean().sqrt()):.4f}" if paired else "—"
    for path in args.distilled:  # `ldmtool distill` outputs: DDIM on the grid each was distilled for
        from ldmtool.models.checkpoint import read_config
        from ldmtool.pipelines.latent_diffusion import LatentDiffusionPipeline

        record = read_config(Path(path)).get("distillation") or {}
        if "steps" not in record:
            sys.exit(f"{path} is not a distilled checkpoint (no distillation record)")
        student = LatentDiffusionPipeline.from_pretrained(Path(args.ae), Path(path), device=device)
        calls = int(record["steps"])
        console.print(f"(c) distilled {path}, {calls} calls ...")
        key = f"distilled-{calls}-{Path(path).name}"
        sets[key], sec, spacing, z = run(
            "ddim", calls, seed=3000, spacing=record.get("spacing", "trailing"), on=student
        )
        info[key] = (f"distilled DDIM ({Path(path).name})", calls, spacing, sec)
        rmse[key] = f"{float((z - ref_z).pow(2).mean().sqrt()):.4f}" if paired else "—"
    boots = bootstrap_frechet(sets, ref_f, depth, args.bootstrap)
    base = f"ddim-{args.baseline_steps}" if f"ddim-{args.baseline_steps}" in sets else None
    rows = [
        (
            "c",
            f"{ref_name} (reference)",
            "",
            str(args.reference_steps),
            "0",
            "",
            "0",
            _real(ref_f, real),
            f"{ref_sec:.2f}",
        )
    ]
    for key, f in sets.items():
        name, calls, spacing, sec = info[key]
        diff = "" if base is None or key == base else _interval(boots[key] - boots[base])
        rows.append(
            (
                "c",
                name,
                spacing,
                str(calls),
                f"{frechet(f, ref_f):.4f}",
                f"{_interval(boots[key])}  Δ {diff}" if diff else _interval(boots[key]),
                rmse.get(key, "—"),
                _real(f, real),
                f"{sec:.2f}",
            )
        )
    if base is not None:
        distilled = sorted({info[k][0] for k in sets if k.startswith("distilled-")})
        for name in [*solvers, *distilled]:
            few = [k for k in sets if info[k][0] == name and info[k][1] <= 10]
            ok = [k for k in few if np.percentile(boots[k] - boots[base], 2.5) <= 0]
            best = min(ok, key=lambda k: info[k][1]) if ok else None
            verdict = f"{info[best][1]} calls" if best else "none at ≤ 10 calls"
            console.print(
                f"(c) {name}: fewest calls whose FD is ≤ DDIM-{args.baseline_steps}'s "
                f"(paired 95% interval of Δ reaches 0): {verdict}"
            )
            if paired:
                close = [k for k in few if float(rmse[k]) <= float(rmse[base])]
                best = min(close, key=lambda k: info[k][1]) if close else None
                verdict = f"{info[best][1]} calls" if best else "none at ≤ 10 calls"
                console.print(f"(c) {name}: fewest calls whose RMSE is ≤ DDIM-{args.baseline_steps}'s: {verdict}")
    return rows


def _real(f: np.ndarray, real: np.ndarray | None) -> str:
    return f"{frechet(f, real):.4f}" if real is not None else "—"


def decode_probe(method: str, depth: int, ae_path: str, decode_batch: int, device_name: str) -> dict:
    """Run in a fresh process: time and peak RSS of decoding one volume of `depth` slices."""
    from monai.networks.nets import AutoencoderKL

    from ldmtool.diffusion.pipeline import decode_latents
    from ldmtool.models.loaders import load_autoencoder

    device = torch.device(device_name)
    ae, cfg = load_autoencoder(Path(ae_path), device)
    mc = ae.cfg
    down = 2 ** (len(mc.channels) - 1)
    h = w = int(cfg.volume_shape[0]) // down
    if method == "slice":
        z = torch.randn(1, mc.latent_channels, depth, h, w, device=device)
        fn = lambda: decode_latents(ae, z, decode_batch, labels_only=True)  # noqa: E731
    else:
        net = (
            AutoencoderKL(
                spatial_dims=3,
                in_channels=1,
                out_channels=1 + ae.num_classes,
                channels=mc.channels,
                num_res_blocks=mc.num_res_blocks,
                attention_levels=(False,) * len(mc.channels),
                latent_channels=mc.latent_channels,
                norm_num_groups=mc.norm_num_groups,
                with_encoder_nonlocal_attn=False,
                with_decoder_nonlocal_attn=False,
            )
            .to(device)
            .eval()
        )
        z = torch.randn(1, mc.latent_channels, depth // down, h, w, device=device)

        def fn():
            with torch.inference_mode():
                return net.decode(z).cpu()

    import threading

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    peak, done = [rss()], threading.Event()
    base = peak[0]

    def watch():  # RSS sampled every millisecond while decoding (ru_maxrss cannot be reset)
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    watcher.start()
    t0 = time.perf_counter()
    fn()
    _sync(device)
    sec = time.perf_counter() - t0
    done.set()
    watcher.join()
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"seconds": sec, "rss_growth_mib": (peak[0] - base) / 2**20, "gpu_mib": gpu}


def part_d(args, device) -> list[tuple]:
    rows = []
    for depth in args.depths:
        for method in ("slice", "3d"):
            cmd = [
                sys.executable,
                __file__,
                "--_probe",
                method,
                str(depth),
                "--ae",
                args.ae,
                "--decode-batch",
                str(args.decode_batch),
                "--device",
                str(device),
            ]
            r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            if r.returncode != 0:
                rows.append(
                    ("d", f"D={depth}", method, "failed: " + (r.stderr.strip().splitlines() or ["?"])[-1], "", "")
                )
                continue
            res = json.loads(r.stdout.strip().splitlines()[-1])
            label = "slice-by-slice (ldmtool)" if method == "slice" else "MONAI 3D AutoencoderKL"
            rows.append(
                (
                    "d",
                    f"D={depth}",
                    label,
                    f"{res['seconds']:.3f} s",
                    f"{res['rss_growth_mib']:.0f} MiB",
                    "—" if res["gpu_mib"] is None else f"{res['gpu_mib']:.0f} MiB",
                )
            )
    return rows


_REPORTED = re.compile(r"^\W*seconds\W+([0-9.]+(?:e[+-]?[0-9]+)?)\W*$", re.MULTILINE)


def _fresh(code: str, runs: int) -> float:
    """Median wall seconds of `python -c code` in fresh processes."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)}
        )
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def part_e(args, device) -> list[tuple]:
    """The installed script (entry(): no interpreter teardown after the command) and, alternating
    with it run by run, the same command through main() with the interpreter's normal exit."""
    script = Path(sys.executable).with_name("ldmtool")
    cli = [str(script)] if script.is_file() else [sys.executable, "-m", "ldmtool"]
    full_exit = [sys.executable, "-c", "import sys; from ldmtool.cli.main import main; sys.exit(main())"]
    walls, reported = {"script": [], "full": []}, {"script": [], "full": []}
    with tempfile.TemporaryDirectory(prefix="ldmtool-startup-") as tmp:
        for k in range(args.startup_runs):
            for how, prefix in (("script", cli), ("full", full_exit)):
                cmd = [*prefix, "--device", str(device), "sample", "--ae", args.ae, "--ldm", args.ldm, "--n", "1"]
                cmd += ["--steps", str(args.steps), "--out", str(Path(tmp) / f"{how}{k}")]
                t0 = time.perf_counter()
                r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
                walls[how].append(time.perf_counter() - t0)
                found = _REPORTED.search(r.stdout)
                if r.returncode != 0 or not found:
                    return [("e", "ldmtool sample --n 1", "failed", (r.stderr.strip().splitlines() or ["?"])[-1])]
                reported[how].append(float(found.group(1)))
    wall, rep_s = float(np.median(walls["script"])), float(np.median(reported["script"]))
    full, full_rep = float(np.median(walls["full"])), float(np.median(reported["full"]))
    runs = args.startup_runs
    python = _fresh("pass", runs)
    torch_s = _fresh("import torch", runs)
    monai_s = _fresh("import monai", runs)
    monai_quick = _fresh("import monai, os; os._exit(0)", runs)
    cli_s = _fresh("import ldmtool.cli.main", runs)
    return [
        ("e", f"ldmtool sample --n 1 --steps {args.steps} (median of {runs})", f"{wall:.2f} s wall",
         f"reports {rep_s:.2f} s: wall / reported = {wall / max(rep_s, 1e-9):.2f} (target < 2)"),
        ("e", "the same through main(), with the interpreter's teardown", f"{full:.2f} s wall",
         f"reports {full_rep:.2f} s: wall / reported = {full / max(full_rep, 1e-9):.2f}"),
        ("e", "python -c pass", f"{python:.2f} s", "the interpreter alone"),
        ("e", "python -c 'import torch'", f"{torch_s:.2f} s", f"+{torch_s - python:.2f} s over the interpreter"),
        ("e", "python -c 'import monai'", f"{monai_s:.2f} s", f"+{monai_s - torch_s:.2f} s over torch"),
        ("e", "python -c 'import monai, os; os._exit(0)'", f"{monai_quick:.2f} s",
         f"teardown of torch + MONAI: {monai_s - monai_quick:.2f} s"),
        ("e", "python -c 'import ldmtool.cli.main'", f"{cli_s:.2f} s", "what `ldmtool --help` imports"),
        ("e", "rest of the process", f"{wall - rep_s - monai_quick:.2f} s",
         "wall − reported − (interpreter + torch + monai without teardown): checkpoint loading, model set-up, exit"),
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ae", default=str(REPO / "demo_out" / "ae"))
    p.add_argument("--ldm", default=str(REPO / "demo_out" / "ldm"))
    p.add_argument("--parts", default="a,b,c,d,e")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--decode-batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=2, help="batches timed in (a)/(b)")
    p.add_argument("--quality-n", type=int, default=64, help="samples per sampler in (c)")
    p.add_argument("--quality-batch", type=int, default=16, help="latent volumes denoised at once in (c)")
    p.add_argument("--calls", type=int, nargs="+", default=[4, 6, 8, 10, 20, 50], help="(c): denoiser calls")
    p.add_argument(
        "--solvers", default="ddim,dpmpp2m,dpmpp3m,unipc2,unipc3,euler", help="(c): samplers (each at its auto spacing)"
    )
    p.add_argument("--spacing", default="auto", help="(c): timestep spacing of the samplers other than DDIM")
    p.add_argument(
        "--distilled",
        nargs="*",
        default=[],
        help="(c): `ldmtool distill` outputs of --ldm, each sampled with DDIM at the steps it was distilled for",
    )
    p.add_argument("--reference-sampler", default="ddpm", help="(c): sampler of the reference set")
    p.add_argument("--reference-steps", type=int, default=1000, help="(c): steps of the reference set")
    p.add_argument("--baseline-steps", type=int, default=50, help="(c): the DDIM run the others are compared to")
    p.add_argument("--bootstrap", type=int, default=500, help="(c): bootstrap replicates")
    p.add_argument("--reference-twice", action="store_true", help="(c): a second DDPM-1000 set as noise floor")
    p.add_argument("--depths", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--startup-runs", type=int, default=3, help="(e): fresh processes timed per measurement")
    p.add_argument("--_probe", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    from ldmtool.runtime import resolve_device

    device = resolve_device(args.device)
    if args._probe:
        print(json.dumps(decode_probe(args._probe[0], int(args._probe[1]), args.ae, args.decode_batch, str(device))))
        return
    for path in (args.ae, args.ldm):
        if not Path(path).exists():
            sys.exit(f"{path} not found: run `make demo` first or pass --ae/--ldm")
    parts = set(args.parts.split(","))
    pipe = load(args, device)
    console.print(f"machine: {_machine(device)}; torch {torch.__version__}; latent {list(pipe.latent_shape)}")
    if parts & {"a", "b"}:
        table = Table(title=f"(a) overhead and (b) vs MONAI — DDIM {args.steps} steps, batch {args.batch_size}")
        for col in ("part", "what", "value", "result"):
            table.add_column(col)
        for row in part_a_b(args, device, pipe, parts):
            table.add_row(*row)
        console.print(table)
    if "c" in parts:
        table = Table(
            title=f"(c) quality vs denoiser calls — Fréchet distance of latent slice features, "
            f"{args.quality_n} samples each, {args.bootstrap} bootstrap replicates"
        )
        for col in (
            "part",
            "sampler",
            "spacing",
            "calls",
            f"FD to {args.reference_sampler}-{args.reference_steps}",
            f"95% interval  (Δ: paired interval of FD − DDIM-{args.baseline_steps}'s)",
            "RMSE to reference (same seeds)",
            "FD to real latents",
            "s/vol",
        ):
            table.add_column(col)
        for row in part_c(args, device, pipe):
            table.add_row(*row)
        console.print(table)
    if "d" in parts:
        table = Table(title="(d) decode scaling with depth (one volume; fresh process each)")
        for col in ("part", "depth", "decoder", "seconds", "peak RSS growth", "peak GPU"):
            table.add_column(col)
        for row in part_d(args, device):
            table.add_row(*row)
        console.print(table)
    if "e" in parts:
        table = Table(title="(e) startup: a fresh `ldmtool sample --n 1` and the imports it pays")
        for col in ("part", "what", "seconds", "note"):
            table.add_column(col)
        for row in part_e(args, device):
            table.add_row(*row)
        console.print(table)


if __name__ == "__main__":
    from _results import recorded  # benchmarks/_results.py: the stamped results file

    with recorded("sampling", enabled="--_probe" not in sys.argv):
        main()
