"""LSSDM (Liang et al. 2024): latent space score-based diffusion for multivariate time series imputation.

Three parts, trained together on stays whose observed values are partly hidden:

1. a variational graph autoencoder (VGAE, Kipf & Welling 2016) over the variables: node v carries
   variable v's observed values, their linear interpolation and its mask over time; graph
   convolutions on the graph of correlated variables map it to a low-dimensional latent z_v;
2. a coarse decoder, Transformer over time + 1D CNN, turning the latents and the linear
   interpolation into a coarse reconstruction of every value (a correction of the interpolation,
   trained on the hidden values, never seeing them as input);
3. a conditional score network (residual blocks of attention over time and a gated convolution,
   one token per time step holding every variable, as SAITS) modelling the residual x − coarse of
   the missing values given the observed values, their mask and the coarse reconstruction
   (v-prediction by default); sampling it several times gives the uncertainty.

The diffusion is on the residual around the coarse reconstruction and the output layers start at
zero, so a briefly trained model imputes near the coarse reconstruction (at first the linear
interpolation) instead of amplifying an untrained ε-prediction by 1/√ᾱ_T (about 170 with the
default schedule) at the first sampling step.

Tensor layout: (B, T, V) = (stays, time steps, variables); the networks work on (B, T, C) tokens.
Written here: the graph convolution (Â H W, no graph library needed) and the blocks; the attention
layers are PyTorch's TransformerEncoderLayer, the timestep embedding MONAI's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ldmtool.series.config import SeriesModelConfig

UNKNOWN_OUTCOME = 2  # outcome embedding index of "not given"


def linear_fill(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Linear interpolation over time of the observed values (B, T, V); before the first and after
    the last observation the nearest one; 0 (the normalised mean) where a variable has none."""
    b, t_len, v = x.shape
    t = torch.arange(t_len, device=x.device).view(1, t_len, 1).expand(b, t_len, v)
    prev = torch.where(m, t, torch.full_like(t, -1)).cummax(1).values  # last observation at or before t
    nxt = torch.where(m, t, torch.full_like(t, t_len)).flip(1).cummin(1).values.flip(1)  # first at or after t
    xp, xn = x.gather(1, prev.clamp(min=0)), x.gather(1, nxt.clamp(max=t_len - 1))
    w = (t - prev).float() / (nxt - prev).clamp(min=1).float()
    has_p, has_n = prev >= 0, nxt < t_len
    inner = xp + w * (xn - xp)
    return torch.where(has_p & has_n, inner, torch.where(has_p, xp, torch.where(has_n, xn, torch.zeros_like(x))))


def variable_graph(values: np.ndarray, k: int, min_pairs: int = 10) -> np.ndarray:
    """(V, V) 0/1 symmetric adjacency: each variable linked to the `k` variables whose values
    (normalised, NaN where unobserved; (N, T, V)) correlate most with its own in the same time step."""
    x = values.reshape(-1, values.shape[-1])
    m = (~np.isnan(x)).astype(np.float64)
    x0 = np.nan_to_num(x)
    cross = x0.T @ x0
    pairs = m.T @ m
    denom = np.sqrt(((x0**2).T @ m) * (m.T @ (x0**2)))
    corr = np.where((pairs >= min_pairs) & (denom > 0), cross / np.maximum(denom, 1e-12), 0.0)
    np.fill_diagonal(corr, 0.0)
    adj = np.zeros_like(corr)
    for i in range(len(corr)):
        for j in np.argsort(-np.abs(corr[i]), kind="stable")[: min(k, len(corr) - 1)]:
            if corr[i, j] != 0:
                adj[i, j] = adj[j, i] = 1.0
    return adj


class GraphConv(nn.Module):
    """Graph convolution H' = Â H W over the variables (Â: normalised adjacency with self-loops)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.lin = nn.Linear(in_features, out_features)

    def forward(self, h: torch.Tensor, a_hat: torch.Tensor) -> torch.Tensor:  # (B, V, F) → (B, V, F')
        return torch.einsum("uv,bvf->buf", a_hat, self.lin(h))


class VariableGraphEncoder(nn.Module):
    """The VGAE encoder: two graph convolutions → mean and log-variance of each variable's latent."""

    def __init__(self, in_features: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.gc = GraphConv(in_features, hidden)
        self.mu = GraphConv(hidden, latent)
        self.logvar = GraphConv(hidden, latent)

    def forward(self, feats: torch.Tensor, a_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.gc(feats, a_hat))
        return self.mu(h, a_hat), self.logvar(h, a_hat).clamp(-10, 10)


def _encoder_layer(channels: int, heads: int) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(
        channels, heads, 2 * channels, dropout=0.0, batch_first=True, norm_first=True, activation="gelu"
    )


class CoarseDecoder(nn.Module):
    """Latents (B, V, d) → coarse values (B, T, V): a curve per variable from its latent and the
    linear interpolation of the observed values, mixed over variables into one token per time step,
    a Transformer over time and a 1D CNN that returns a correction of the interpolation (zero at
    initialisation, so an untrained decoder gives linear interpolation)."""

    def __init__(self, n_vars: int, n_steps: int, latent: int, channels: int, heads: int, layers: int) -> None:
        super().__init__()
        self.expand = nn.Linear(latent, n_steps)
        self.inp = nn.Linear(3 * n_vars, channels)
        self.pos = nn.Parameter(torch.randn(1, n_steps, channels) * 0.02)
        self.transformer = nn.TransformerEncoder(_encoder_layer(channels, heads), layers, enable_nested_tensor=False)
        self.cnn = nn.Sequential(
            nn.Conv1d(channels, channels, 3, padding=1), nn.GELU(), nn.Conv1d(channels, n_vars, 3, padding=1)
        )
        nn.init.zeros_(self.cnn[-1].weight)
        nn.init.zeros_(self.cnn[-1].bias)

    def forward(self, z: torch.Tensor, lin: torch.Tensor, m: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        curves = self.expand(z).transpose(1, 2)  # (B, T, V)
        tokens = self.inp(torch.cat([curves, lin, m.float()], 2))
        h = self.transformer(tokens + self.pos + cond[:, None])  # (B, T, C)
        return lin + self.cnn(h.transpose(1, 2)).transpose(1, 2)


class ScoreBlock(nn.Module):
    """A residual block of the score network: add the step/condition embedding, then a Transformer
    layer over time and a gated 1D convolution (local temporal detail)."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.emb = nn.Linear(channels, channels)
        self.attn = _encoder_layer(channels, heads)
        self.conv = nn.Conv1d(channels, 2 * channels, 3, padding=1)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:  # (B, T, C), (B, C)
        y = self.attn(h + self.emb(e)[:, None])
        gate, filt = self.conv(y.transpose(1, 2)).chunk(2, 1)
        return y + (torch.sigmoid(gate) * torch.tanh(filt)).transpose(1, 2)


class ScoreNetwork(nn.Module):
    """The denoiser of the missing values' residual r = x − coarse: from [r_t on the missing cells,
    observed residual, mask, coarse reconstruction] of every variable at a time step (one token per
    step, as SAITS), the step + condition embedding and Transformer blocks over time, it predicts the
    objective (ε or v) of every cell. The output layer starts at zero: an untrained network's draws
    are the coarse reconstruction."""

    def __init__(self, n_vars: int, n_steps: int, channels: int, heads: int, layers: int) -> None:
        super().__init__()
        self.channels = channels
        self.inp = nn.Linear(4 * n_vars, channels)
        self.pos = nn.Parameter(torch.randn(1, n_steps, channels) * 0.02)
        self.step_mlp = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.blocks = nn.ModuleList(ScoreBlock(channels, heads) for _ in range(layers))
        self.out = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, n_vars))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, r_t, t, x, m, coarse, cond) -> torch.Tensor:  # (B, T, V) each; t (B,); cond (B, C)
        from monai.networks.nets.diffusion_model_unet import get_timestep_embedding

        mf = m.float()
        h = self.inp(torch.cat([r_t * (1 - mf), (x - coarse) * mf, mf, coarse], 2)) + self.pos
        e = self.step_mlp(get_timestep_embedding(t, self.channels).to(h.dtype)) + cond
        for block in self.blocks:
            h = block(h, e)
        return self.out(h)


class LSSDM(nn.Module):
    """The whole model; the graph (`adjacency`, V×V 0/1) is a buffer saved with the weights."""

    def __init__(self, cfg: SeriesModelConfig, n_vars: int, n_steps: int, n_static: int, adjacency: torch.Tensor):
        super().__init__()
        self.cfg, self.n_vars, self.n_steps, self.n_static = cfg, n_vars, n_steps, n_static
        a = adjacency.float() + torch.eye(n_vars)
        d = a.sum(1).rsqrt()
        self.register_buffer("adjacency", adjacency.float())
        self.register_buffer("a_hat", d[:, None] * a * d[None])
        self.var_id = nn.Parameter(torch.randn(n_vars, 8) * 0.1)  # tells the graph's nodes apart
        self.encoder = VariableGraphEncoder(3 * n_steps + 8, cfg.gcn_hidden, cfg.latent_dim)
        c = cfg.channels
        self.decoder = CoarseDecoder(n_vars, n_steps, cfg.latent_dim, c, cfg.heads, cfg.decoder_layers)
        self.score = ScoreNetwork(n_vars, n_steps, c, cfg.heads, cfg.score_layers)
        self.static_in = nn.Sequential(nn.Linear(2 * n_static, c), nn.SiLU(), nn.Linear(c, c)) if n_static else None
        self.outcome_emb = nn.Embedding(3, c)

    def condition(self, static: torch.Tensor, known: torch.Tensor, outcome: torch.Tensor) -> torch.Tensor:
        """(B, C) embedding of the normalised descriptors (0 where unknown), their availability and the
        outcome (0, 1 or UNKNOWN_OUTCOME)."""
        c = self.outcome_emb(outcome)
        if self.static_in is not None:
            c = c + self.static_in(torch.cat([static * known, known], 1))
        return c

    def encode(self, x: torch.Tensor, m: torch.Tensor, lin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VGAE posterior (mean, log-variance), each (B, V, d), from the observed values `x` where `m`
        and their linear interpolation `lin`."""
        feats = torch.cat([x * m, lin, m.float()], 1).transpose(1, 2)  # (B, V, 3T)
        feats = torch.cat([feats, self.var_id.expand(x.shape[0], -1, -1)], 2)
        return self.encoder(feats, self.a_hat)

    def coarse(self, x, m, cond, noise: torch.Tensor | None = None):
        """(coarse reconstruction (B, T, V), mean, log-variance); `noise` (B, V, d) draws the latent
        (training), None takes its mean."""
        lin = linear_fill(x * m, m)
        mu, logvar = self.encode(x, m, lin)
        z = mu if noise is None else mu + noise * (0.5 * logvar).exp()
        return self.decoder(z, lin, m, cond), mu, logvar

    def graph_losses(self, mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(KL to the standard normal, BCE of the inner-product reconstruction of the adjacency)."""
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).mean()
        logits = torch.einsum("bud,bvd->buv", mu, mu) / math.sqrt(mu.shape[-1])
        target = self.adjacency.expand_as(logits)
        pos = target.sum().clamp(min=1)
        weight = (target.numel() - pos) / pos  # the VGAE paper's weighting of the sparse positive links
        return kl, F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)

    def denoise(self, r_t, t, x, m, coarse, cond) -> torch.Tensor:
        """The score network's output (ε or v, per the config's objective; (B, T, V)) for the noisy
        residual `r_t` of the missing cells."""
        return self.score(r_t, t, x, m, coarse, cond)

    def forward(self, x, m_cond, hidden, static, known, outcome, z_noise, a_t, t, eps) -> dict[str, torch.Tensor]:
        """The training losses of one batch (a forward for DistributedDataParallel).

        x: (B, T, V) normalised values (0 where unobserved); m_cond: the observed cells given as
        input; hidden: the observed cells hidden from the input, whose values are the targets;
        a_t: (B,) ᾱ of the diffusion steps t; eps: the noise; z_noise: (B, V, d) draws of the VGAE
        latent. The diffusion is on the residual x − coarse (the coarse reconstruction detached)."""
        cond = self.condition(static, known, outcome)
        coarse, mu, logvar = self.coarse(x, m_cond, cond, z_noise)
        h = hidden.float()
        n = h.sum().clamp(min=1)
        kl, graph = self.graph_losses(mu, logvar)
        base = coarse.detach()
        a = a_t.view(-1, 1, 1)
        r0 = x - base
        r_t = a.sqrt() * r0 + (1 - a).sqrt() * eps
        target = eps if self.cfg.objective == "eps" else a.sqrt() * eps - (1 - a).sqrt() * r0
        pred = self.denoise(r_t, t, x, m_cond, base, cond)
        return {
            "coarse": ((coarse - x).pow(2) * h).sum() / n,
            "kl": kl,
            "graph": graph,
            "diffusion": ((pred - target).pow(2) * h).sum() / n,
        }
