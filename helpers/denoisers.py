r"""Denoisers: the networks :math:`\epsilon_\theta(x_t, t, c)` that predict the added noise.

A denoiser sees a noisy point :math:`x_t`, the step :math:`t` and optionally a
condition :math:`c`, and returns a tensor shaped like :math:`x_t` (the noise
estimate). Latent vectors need no convolutions: a residual MLP is enough.

How :math:`t` and :math:`c` get in
----------------------------------
- The integer step :math:`t` becomes a vector with sinusoidal features at
  geometrically spaced frequencies (the transformer position encoding, as in
  Ho et al. 2020), then a small MLP (:class:`SinusoidalTimeEmbedding`).
- The condition becomes a vector of the same size: a *scalar* (e.g. the
  standardised target accuracy of a network) through a small MLP, a *class*
  through an embedding table. Both have one extra learned **null** embedding,
  used when the condition is dropped (classifier-free guidance; see
  :mod:`helpers.diffusion`).
- Their sum :math:`e = e_t + e_c` modulates every residual block by FiLM:
  :math:`h \leftarrow h + \mathrm{MLP}\big(\mathrm{LN}(h)\,(1+\gamma(e)) + \beta(e)\big)`.

The last layer is initialised to zero, so the untrained denoiser predicts
:math:`\hat\epsilon = 0` and training starts from a well-defined point.

**Input skip** (``input_skip=True``). An MLP of width ``hidden`` can only output
noise estimates in a ``hidden``-dimensional subspace. That is fine for a 64-d
latent, not for a 10,000-d weight vector: there, the data occupy a few hundred
directions, and in all the others the right answer is linear in the input,
:math:`\hat\epsilon = (x_t - \sqrt{\bar\alpha_t}\,\mu)/\sqrt{1-\bar\alpha_t}`. The skip adds
:math:`g(t)\,x_t` with a learned scalar :math:`g(t)` (zero at initialisation), so the
direct baseline of notebook 03 gets a fair chance.

**A small U-Net for spatial latents** (:class:`UNetDenoiser`). Image latents
(C, 8, 8) have neighbours: a convolution shares one small filter over every
position, where an MLP would learn each position separately. The U-Net of Ho
et al. 2020, shrunk: residual conv blocks with the time + class embedding added
as a per-channel scale and shift, a stride-2 step down to 4x4 (optional
self-attention there, where 16 tokens are cheap), the same way back up with
skip connections, and a zero-initialised output convolution.

Calling convention (shared with :mod:`helpers.diffusion`):
``model(x_t, t, cond=None, drop_cond=None)``; ``cond=None`` → null condition for
the whole batch; ``drop_cond`` bool ``(B,)`` → null condition for those rows.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SinusoidalTimeEmbedding", "ResidualBlock", "MLPDenoiser", "ConvResBlock", "SelfAttention2d",
           "UNetDenoiser"]


class SinusoidalTimeEmbedding(nn.Module):
    r"""Map step indices ``t`` (B,) to sinusoidal features (B, ``dim``).

    .. math:: \mathrm{emb}(t)_{i} = \sin(t\,\omega_i),\ \mathrm{emb}(t)_{i+d/2} = \cos(t\,\omega_i),
              \quad \omega_i = 10000^{-i/(d/2)}.
    """

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even; got {dim}")
        self.dim = dim
        half = dim // 2
        # \omega_i = max_period^{-i / half}
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class ResidualBlock(nn.Module):
    r""":math:`h + W_2\,\mathrm{drop}(\mathrm{SiLU}(W_1\,[\mathrm{LN}(h)(1+\gamma) + \beta]))`, FiLM from the embedding."""

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
        z = self.norm(h) * (1 + gamma) + beta
        return h + self.fc2(self.drop(self.act(self.fc1(z))))


class MLPDenoiser(nn.Module):
    r"""A residual MLP that predicts the noise on vectors (B, ``dim``) — or on any (B, ...) flattened to ``dim``.

    - ``dim``: length of the data vectors (the latent size);
    - ``hidden``, ``n_blocks``: width and depth of the residual trunk;
    - ``time_dim``: size of the sinusoidal time features;
    - ``cond_kind``: None (unconditional), ``"scalar"`` (a float per row, e.g. a
      standardised target accuracy) or ``"class"`` (an integer label in
      ``[0, n_classes)``); both get a learned null embedding for guidance;
    - ``dropout``: dropout inside the residual blocks;
    - ``input_skip``: add :math:`g(t)\,x_t` to the output (for data much wider than ``hidden``).
    """

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
        idx = torch.full((B,), self.n_classes, dtype=torch.long, device=device)
        return self.class_embed(idx)

    def embed_cond(self, cond, drop_cond, B: int, device) -> torch.Tensor | None:
        """The condition embedding :math:`e_c` (B, hidden), with null rows where dropped."""
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
        emb = self.time_embed(t)
        t_emb = emb
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


# ---------------------------------------------------------------------------
# A small U-Net over spatial latents (C, H, W)
# ---------------------------------------------------------------------------

def _groups(channels: int) -> int:
    return math.gcd(8, channels)


class ConvResBlock(nn.Module):
    r"""Residual conv block with the embedding as scale and shift (Ho et al. 2020; Dhariwal & Nichol 2021).

    .. math:: h = \mathrm{conv}(\mathrm{SiLU}(\mathrm{GN}(x))),\quad
              h \leftarrow \mathrm{GN}(h)\,(1+\gamma(e)) + \beta(e),\quad
              \mathrm{out} = \mathrm{skip}(x) + \mathrm{conv}(\mathrm{drop}(\mathrm{SiLU}(h))).

    Shapes: ``x`` (B, c_in, H, W), ``emb`` (B, emb_dim) -> (B, c_out, H, W).
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        gamma, beta = self.film(self.act(emb))[:, :, None, None].chunk(2, dim=1)
        # h <- GN(h) (1 + gamma) + beta
        h = self.norm2(h) * (1 + gamma) + beta
        return self.skip(x) + self.conv2(self.drop(self.act(h)))


class SelfAttention2d(nn.Module):
    r"""Multi-head self-attention over the H*W positions of a feature map, in a residual branch.

    .. math:: \mathrm{out} = x + W_o\,\mathrm{softmax}\!\big(QK^\top/\sqrt{d}\big)V,
              \quad Q, K, V = W_{q,k,v}\,\mathrm{GN}(x).
    """

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention needs channels divisible by heads; got {channels} and {heads}")
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        # softmax(Q^T K / sqrt(d)) over the H*W key positions
        out = nn.functional.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                                         v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))


class UNetDenoiser(nn.Module):
    r"""A small U-Net :math:`\epsilon_\theta(z_t, t, c)` over spatial latents (B, C, H, W).

    - ``in_channels``: C of the latent map (H and W must be divisible by 2**(len(mults)-1));
    - ``width``: channels at the first level; ``mults``: width multiplier per level
      (one stride-2 step between levels: (1, 2) on an 8x8 latent gives levels 8x8 and 4x4);
    - ``n_res``: residual blocks per level on the way down (one more on the way up);
    - ``attention``: self-attention at the lowest level and in the middle (4x4: 16 tokens);
    - ``time_dim``: size of the sinusoidal time features; the embedding has 4 x ``width`` numbers;
    - ``n_classes``: class conditioning with a learned **null class** (index ``n_classes``)
      for classifier-free guidance; None = unconditional; ``dropout`` in the blocks.

    Same calling convention as :class:`MLPDenoiser`: ``model(x_t, t, cond=None, drop_cond=None)``.
    """

    def __init__(self, in_channels: int = 4, width: int = 64, mults=(1, 2), n_res: int = 2,
                 attention: bool = True, time_dim: int = 64, n_classes: int | None = 2,
                 dropout: float = 0.0, heads: int = 4):
        super().__init__()
        mults = [int(m) for m in mults]
        self.in_channels, self.n_classes = int(in_channels), n_classes
        self.cond_kind = "class" if n_classes else None
        self.config = dict(in_channels=int(in_channels), width=int(width), mults=mults, n_res=int(n_res),
                           attention=bool(attention), time_dim=int(time_dim), n_classes=n_classes,
                           dropout=float(dropout), heads=int(heads))
        emb_dim = 4 * width
        self.time_embed = nn.Sequential(SinusoidalTimeEmbedding(time_dim), nn.Linear(time_dim, emb_dim),
                                        nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if n_classes:
            # index n_classes is the null class ("no condition")
            self.class_embed = nn.Embedding(n_classes + 1, emb_dim)
        self.inp = nn.Conv2d(in_channels, width, 3, padding=1)
        widths = [width * m for m in mults]
        self.down = nn.ModuleList()
        skips, c = [width], width
        for level, w in enumerate(widths):
            last = level == len(widths) - 1
            for _ in range(n_res):
                self.down.append(ConvResBlock(c, w, emb_dim, dropout))
                c = w
                if attention and last:
                    self.down.append(SelfAttention2d(c, heads))
                skips.append(c)
            if not last:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([ConvResBlock(c, c, emb_dim, dropout)]
                                 + ([SelfAttention2d(c, heads)] if attention else [])
                                 + [ConvResBlock(c, c, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            for _ in range(n_res + 1):
                self.up.append(ConvResBlock(c + skips.pop(), w, emb_dim, dropout))
                c = w
                if attention and level == len(widths) - 1:
                    self.up.append(SelfAttention2d(c, heads))
            if level > 0:
                # nearest-neighbour upsampling only: the next block's convolution mixes it
                # (a convolution here would be the most expensive layer of the net)
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.out_norm = nn.GroupNorm(_groups(c), c)
        self.out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def embed(self, t: torch.Tensor, cond, drop_cond, B: int, device) -> torch.Tensor:
        r"""The embedding :math:`e = e_t + e_c` (B, 4 width); null class where ``cond`` is None or dropped."""
        emb = self.time_embed(t)
        if self.n_classes is None:
            if cond is not None:
                raise ValueError("this denoiser is unconditional (n_classes=None) but got a cond")
            return emb
        null = torch.full((B,), self.n_classes, dtype=torch.long, device=device)
        if cond is None:
            idx = null
        else:
            idx = torch.as_tensor(cond, device=device).long()
            if idx.ndim == 0:
                idx = idx.expand(B)
            if idx.shape[0] != B:
                raise ValueError(f"cond has {idx.shape[0]} rows, expected {B}")
            if drop_cond is not None:
                idx = torch.where(torch.as_tensor(drop_cond, device=device).bool().reshape(B), null, idx)
        # e = e_t + e_c
        return emb + self.class_embed(idx)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None, drop_cond=None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected latents of shape (B, {self.in_channels}, H, W); got {tuple(x.shape)}")
        B = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(B)
        emb = self.embed(t, cond, drop_cond, B, x.device)
        h = self.inp(x)
        hs = [h]
        for layer in self.down:
            if isinstance(layer, ConvResBlock):
                h = layer(h, emb)
                hs.append(h)
            elif isinstance(layer, SelfAttention2d):
                h = layer(h)
                hs[-1] = h
            else:  # stride-2 step down
                h = layer(h)
                hs.append(h)
        for layer in self.mid:
            h = layer(h, emb) if isinstance(layer, ConvResBlock) else layer(h)
        for layer in self.up:
            if isinstance(layer, ConvResBlock):
                h = layer(torch.cat([h, hs.pop()], 1), emb)
            else:
                h = layer(h)
        return self.out(nn.functional.silu(self.out_norm(h)))

