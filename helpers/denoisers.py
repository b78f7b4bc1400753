r"""Residual MLP denoisers :math:`\epsilon_\theta(x_t, t, c)` (notebook 03 writes the same network from scratch).

The time and condition embeddings (with a learned null condition for guidance) are summed, :math:`e = e_t + e_c`,
and modulate every block by FiLM; the output layer starts at zero."""

from __future__ import annotations

import math

import torch
from torch import nn

class SinusoidalTimeEmbedding(nn.Module):
    r"""Steps ``t`` (B,) to features (B, ``dim``): :math:`[\sin(t\omega_i), \cos(t\omega_i)]`,
    :math:`\omega_i = 10000^{-i/(d/2)}`."""

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even; got {dim}")
        self.dim, half = dim, dim // 2
        # \omega_i = 10000^{-i / half}
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class ResidualBlock(nn.Module):
    r""":math:`h + W_2\,\mathrm{drop}(\mathrm{SiLU}(W_1\,[\mathrm{LN}(h)(1+\gamma) + \beta]))`, :math:`(\gamma, \beta)` from the embedding."""

    def __init__(self, hidden: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.film = nn.Linear(emb_dim, 2 * hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(self.act(emb)).chunk(2, dim=-1)
        # FiLM: LN(h) (1 + \gamma) + \beta
        z = self.norm(h) * (1 + gamma) + beta
        return h + self.fc2(self.drop(self.act(self.fc1(z))))


class MLPDenoiser(nn.Module):
    r"""A residual MLP noise predictor on (B, ``dim``) rows; ``cond_kind``: None, ``"scalar"`` or ``"class"``;
    ``input_skip`` adds :math:`g(t)\,x_t`, as a narrow MLP predicts noise only in a ``hidden``-dim subspace."""

    def __init__(self, dim: int, hidden: int = 256, n_blocks: int = 3, time_dim: int = 64,
                 cond_kind: str | None = None, n_classes: int | None = None, dropout: float = 0.0,
                 input_skip: bool = False):
        super().__init__()
        if cond_kind not in (None, "scalar", "class"):
            raise ValueError(f"cond_kind must be None, 'scalar' or 'class'; got {cond_kind!r}")
        if cond_kind == "class" and not n_classes:
            raise ValueError("cond_kind='class' needs n_classes")
        self.dim, self.cond_kind, self.n_classes = dim, cond_kind, n_classes
        self.config = dict(dim=dim, hidden=hidden, n_blocks=n_blocks, time_dim=time_dim,
                           cond_kind=cond_kind, n_classes=n_classes, dropout=dropout)
        if input_skip:
            self.config["input_skip"] = True
        self.time_embed = nn.Sequential(
            SinusoidalTimeEmbedding(time_dim), nn.Linear(time_dim, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden))
        if cond_kind == "scalar":
            self.cond_embed = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            self.null_embed = nn.Parameter(torch.zeros(hidden))
        elif cond_kind == "class":
            # index n_classes is the null class ("no condition")
            self.class_embed = nn.Embedding(n_classes + 1, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList([ResidualBlock(hidden, hidden, dropout) for _ in range(n_blocks)])
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.skip_gain = None
        if input_skip:
            # g(t): one scalar per row from the time embedding, zero at initialisation
            self.skip_gain = nn.Linear(hidden, 1)
            nn.init.zeros_(self.skip_gain.weight)
            nn.init.zeros_(self.skip_gain.bias)

    def _null(self, B: int, device) -> torch.Tensor:
        if self.cond_kind == "scalar":
            return self.null_embed.expand(B, -1)
        return self.class_embed(torch.full((B,), self.n_classes, dtype=torch.long, device=device))

    def embed_cond(self, cond, drop_cond, B: int, device) -> torch.Tensor | None:
        """The condition embedding :math:`e_c` (B, hidden), with the null embedding where dropped."""
        if self.cond_kind is None:
            if cond is not None:
                raise ValueError("this denoiser is unconditional (cond_kind=None) but got a cond")
            return None
        if cond is None:
            return self._null(B, device)
        cond = torch.as_tensor(cond, device=device)
        if cond.ndim == 0:
            cond = cond.expand(B)
        if cond.shape[0] != B:
            raise ValueError(f"cond has {cond.shape[0]} rows, expected {B}")
        if self.cond_kind == "scalar":
            e = self.cond_embed(cond.float().reshape(B, 1))
        else:
            e = self.class_embed(cond.long().reshape(B))
        if drop_cond is not None:
            drop = torch.as_tensor(drop_cond, device=device).bool().reshape(B, 1)
            e = torch.where(drop, self._null(B, device), e)
        return e

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None, drop_cond=None) -> torch.Tensor:
        B = x.shape[0]
        h_in = x.reshape(B, -1)
        if h_in.shape[1] != self.dim:
            raise ValueError(f"expected inputs with {self.dim} features per row; got shape {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(B)
        t_emb = emb = self.time_embed(t)
        e_c = self.embed_cond(cond, drop_cond, B, x.device)
        if e_c is not None:
            # e = e_t + e_c
            emb = emb + e_c
        h = self.inp(h_in)
        for block in self.blocks:
            h = block(h, emb)
        out = self.out(self.out_norm(h))
        if self.skip_gain is not None:
            # \hat\epsilon = MLP(x_t, t, c) + g(t) x_t
            out = out + self.skip_gain(t_emb) * h_in
        return out.reshape(x.shape)
