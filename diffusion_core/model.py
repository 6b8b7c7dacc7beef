"""Time-conditioned U-Nets that predict the noise eps_theta(x_t, t[, y]).

Two architectures share one config and one call signature, `model(x_t, t, y=None) -> eps`:
- "unet": a DDPM-style U-Net (Ho et al. 2020, appendix B, scaled down): residual blocks with
  GroupNorm and SiLU, the timestep embedding added in every block, skip connections between
  matching resolutions, optional self-attention at the lowest resolution, optional class
  conditioning with a null label for classifier-free guidance (Ho & Salimans 2022).
- "lesson": the minimal TinyUNet of the lesson: two resolutions, plain conv blocks, the time
  embedding added once per level. Kept so the app can show what the bigger net buys.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F

from .schedules import check_choice

Arch = Literal["unet", "lesson"]
ARCHS: tuple[str, ...] = get_args(Arch)


@dataclass(frozen=True)
class ModelConfig:
    arch: Arch = "unet"  # "unet" (residual U-Net) or "lesson" (the lesson's minimal TinyUNet)
    in_channels: int = 1  # 1 for MNIST, 3 for circles
    image_size: int = 28  # H = W; must be divisible by 2^(len(channel_mults)-1)
    base_channels: int = 32  # width of the first level
    channel_mults: tuple[int, ...] = (1, 2, 4)  # width of level i = base_channels * channel_mults[i]
    num_res_blocks: int = 1  # residual blocks per level on the way down ("unet" only)
    attention: bool = False  # self-attention in the middle block, at the lowest resolution
    num_classes: int = 0  # 0: unconditional; N: labels 0..N-1 plus the null label N
    dropout: float = 0.0  # dropout inside residual blocks
    norm_groups: int = 8  # GroupNorm groups; every width must be divisible by it
    patch_size: int = 1  # "unet": fold p x p pixel patches into channels first (pixel_unshuffle); 1: none

    def __post_init__(self) -> None:
        check_choice("arch", self.arch, ARCHS)
        object.__setattr__(self, "channel_mults", tuple(int(m) for m in self.channel_mults))
        if (self.in_channels < 1 or self.base_channels < 1 or self.num_res_blocks < 1 or not self.channel_mults
                or self.patch_size < 1 or (self.arch != "unet" and self.patch_size != 1)):
            raise ValueError(f"invalid model config {self}")
        down = self.patch_size * 2 ** (len(self.channel_mults) - 1) if self.arch == "unet" else 2
        if self.image_size % down:
            raise ValueError(f"image_size {self.image_size} must be divisible by {down} for {self}")
        for m in self.channel_mults:
            if (self.base_channels * m) % self.norm_groups:
                raise ValueError(f"width {self.base_channels * m} is not divisible by norm_groups={self.norm_groups}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def null_label(self) -> int:
        """The label that means "no class" (classifier-free guidance's unconditional branch)."""
        return self.num_classes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return cls(**{**d, "channel_mults": tuple(d.get("channel_mults", (1, 2, 4)))})  # older cards: patch_size 1


PRESETS: dict[str, ModelConfig] = {
    # The lesson's minimal TinyUNet: 2 resolutions, widths 32/64, plain convs.
    "lesson": ModelConfig(arch="lesson", base_channels=32, channel_mults=(1, 2)),
    # Small residual U-Net for fast CPU sampling.
    "small": ModelConfig(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1),
    # Cheap enough to stream DDIM-50 for 16 images in about a second on 2 CPU cores.
    "fast": ModelConfig(base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1, attention=True),
    # `fast` on 2x2 patches (patch_size=2): levels of width 32/64 at H/2 and H/4, attention at H/4.
    # fast's parameter count; one call 1.6x to 1.9x faster on 2 CPU cores (bench/arch.py), but at equal
    # training steps a worse null label (README, "a cheaper shape for the net"): no checkpoint uses it yet.
    "patch2": ModelConfig(base_channels=32, channel_mults=(1, 2), num_res_blocks=1, attention=True, patch_size=2),
    # The reference net of shared/notes: widths 32/64/128, one block per level.
    "base": ModelConfig(base_channels=32, channel_mults=(1, 2, 4), num_res_blocks=1),
    # Wider and deeper, with attention at the lowest resolution.
    "large": ModelConfig(base_channels=64, channel_mults=(1, 2, 2), num_res_blocks=2, attention=True),
}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A preset config with dataset-specific fields overridden, e.g. preset("small", in_channels=3, image_size=32)."""
    check_choice("model preset", name, PRESET_NAMES)
    return replace(PRESETS[name], **overrides)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps (Vaswani et al. 2017, as used by DDPM).

    :param t: [N] timesteps (integer or fractional).
    :return: [N x dim] float32: cos(t * f_i) then sin(t * f_i), f_i = max_period^(-i/half).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # [N x half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, with the time(+class) embedding added in between; 1x1 skip if widths differ.

    `self.emb` projects the net's embedding to this block's width; the net applies it (see
    `Conditioned.conditioning`) and hands the block its [N x c_out] slice.
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (improved-diffusion's zero_module)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x [N x c_in x H x W], c = self.emb(embedding) [N x c_out] -> [N x c_out x H x W]."""
        h = self.conv1(F.silu(self.norm1(x)))  # [N x c_out x H x W]
        h = h + c[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the H*W positions, residual."""

    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).transpose(-1, -2).unbind(1)  # each [N x HW x C]
        a = F.scaled_dot_product_attention(q, k, v)  # [N x HW x C]
        return x + self.proj(a.transpose(-1, -2).reshape(n, c, h, w))


class Embedding(nn.Module):
    """e(t, y) = MLP(sinusoid(t)) + E[y]: the time embedding plus a learned class embedding (index num_classes =
    null label; none in an unconditional net)."""

    def __init__(self, base: int, emb_dim: int, num_classes: int) -> None:
        super().__init__()
        self.base = base
        self.mlp = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None

    def time(self, t: torch.Tensor) -> torch.Tensor:
        """MLP(sinusoid(t)): t [N] -> [N x emb_dim] in the weights' dtype."""
        dtype = self.mlp[0].weight.dtype  # float32, or bfloat16 when the whole net was cast
        return self.mlp(timestep_embedding(t, self.base).to(dtype))

    def forward(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        emb = self.time(t)  # [N x emb_dim]
        if self.label is not None:
            if y is None:
                y = torch.full_like(t, self.label.num_embeddings - 1, dtype=torch.long)
            emb = emb + self.label(y)
        return emb


class Conditioned(nn.Module):
    """A net that sees (t, y) only through c(t, y), a few linear maps of the embedding e(t, y):

        eps_theta(x_t, t, y) = denoise(x_t, c(t, y)),   c(t, y) = [W_1 e + b_1, ..., W_K e + b_K]  [N x D],

    with D the sum of the K widths (one slice per block that adds the embedding, in call order). c does
    not depend on x_t, so a caller that knows its timesteps can compute c once per timestep rather than
    once per model call; and since e(t, y) = MLP(sinusoid(t)) + E[y] and the W_k are linear,
    c(t, y) = c_time(t) + c_label(y): `conditioning_tables` holds every value in T + K + 1 rows
    (diffusion_core.inference looks them up).
    """

    embed: Embedding

    def projections(self) -> list[nn.Linear]:
        """The K linear maps W_k e + b_k, in the order `denoise` consumes their slices of c."""
        raise NotImplementedError

    def conditioning(self, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """c(t, y): t [N], y [N] or None (the null label of a conditional net) -> [N x D]."""
        emb = self.embed(t, y)  # [N x emb_dim]
        return torch.cat([w(emb) for w in self.projections()], dim=1)

    def conditioning_tables(self, num_timesteps: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(c_time [T x D], row t = [W_k MLP(sinusoid(t)) + b_k]_k, for t = 0..T-1; c_label [(classes + 1) x D],
        row y = [W_k E[y]]_k, or None for an unconditional net), in the weights' dtype:
        c(t, y) = c_time[t] + c_label[y], and c(t, None) = c_time[t] + c_label[null label]."""
        ws = self.projections()
        device = ws[0].weight.device
        e_t = self.embed.time(torch.arange(num_timesteps, device=device))  # [T x emb_dim]
        c_time = torch.cat([w(e_t) for w in ws], dim=1)
        if self.embed.label is None:
            return c_time, None
        e_y = self.embed.label.weight  # [(classes + 1) x emb_dim]
        return c_time, torch.cat([F.linear(e_y, w.weight) for w in ws], dim=1)

    @functools.cached_property
    def conditioning_widths(self) -> list[int]:
        """The K widths of c's slices, in call order (fixed once the net is built)."""
        return [w.out_features for w in self.projections()]

    def split_conditioning(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """c [N x D] -> its K slices [N x width_k], in call order."""
        return c.split(self.conditioning_widths, dim=1)

    def denoise(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """eps_theta from x_t [N x C x H x W] and c = conditioning(t, y) [N x D]."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.denoise(x, self.conditioning(t, y))


class UNet(Conditioned):
    """Residual U-Net: eps_theta(x_t, t, y). Input and output [N x C x H x W]; t [N]; y [N] or None.

    With patch_size p > 1 the net works on [N x C*p*p x H/p x W/p]: pixel_unshuffle in, pixel_shuffle
    out, an invertible downsampling before the first layer (Hoogeboom et al. 2023, "simple diffusion":
    downsample to avoid high-resolution feature maps). The top level then has p*p times fewer
    positions; it is where a CPU spends its time on narrow convolutions.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        g, ch = cfg.norm_groups, cfg.base_channels
        widths = [ch * m for m in cfg.channel_mults]
        emb_dim = 4 * ch
        self.embed = Embedding(ch, emb_dim, cfg.num_classes)
        c_io = cfg.in_channels * cfg.patch_size**2  # channels of the (patched) input and output
        self.conv_in = nn.Conv2d(c_io, ch, 3, padding=1)

        self.down = nn.ModuleList()  # per level: ResBlocks, then a stride-2 conv except at the last level
        skips = [ch]  # widths of the tensors pushed on the skip stack
        c = ch
        for i, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(c, w, emb_dim, g, cfg.dropout))
                c = w
                skips.append(c)
            down = nn.Conv2d(c, c, 3, stride=2, padding=1) if i < len(widths) - 1 else None
            if down is not None:
                skips.append(c)
            self.down.append(nn.ModuleDict({"blocks": blocks, **({"down": down} if down is not None else {})}))

        self.mid1 = ResBlock(c, c, emb_dim, g, cfg.dropout)
        self.attn = SelfAttention(c, g) if cfg.attention else None
        self.mid2 = ResBlock(c, c, emb_dim, g, cfg.dropout)

        self.up = nn.ModuleList()  # per level: ResBlocks fed [h, skip], then nearest-upsample + conv except at the top
        for i, w in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(c + skips.pop(), w, emb_dim, g, cfg.dropout))
                c = w
            up = nn.Conv2d(c, c, 3, padding=1) if i > 0 else None
            self.up.append(nn.ModuleDict({"blocks": blocks, **({"up": up} if up is not None else {})}))
        assert not skips, "every skip must be consumed"

        self.norm_out = nn.GroupNorm(g, c)
        self.conv_out = nn.Conv2d(c, c_io, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _res_blocks(self) -> list[ResBlock]:
        """Every ResBlock in the order `denoise` calls them."""
        down = [b for level in self.down for b in level["blocks"]]
        return down + [self.mid1, self.mid2] + [b for level in self.up for b in level["blocks"]]

    def projections(self) -> list[nn.Linear]:
        return [block.emb for block in self._res_blocks()]

    def denoise(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        p = self.cfg.patch_size
        cs = iter(self.split_conditioning(c))  # one [N x width] slice per ResBlock, in call order
        if p > 1:
            x = F.pixel_unshuffle(x, p)  # [N x C_in*p*p x H/p x W/p]
        h = self.conv_in(x)  # [N x C x H' x W'], H' = H/p
        hs = [h]
        for level in self.down:
            for block in level["blocks"]:
                h = block(h, next(cs))
                hs.append(h)
            if "down" in level:
                h = level["down"](h)  # [N x c x H/2 x W/2]
                hs.append(h)
        h = self.mid1(h, next(cs))
        if self.attn is not None:
            h = self.attn(h)
        h = self.mid2(h, next(cs))
        for level in self.up:
            for block in level["blocks"]:
                h = block(torch.cat([h, hs.pop()], dim=1), next(cs))
            if "up" in level:
                h = level["up"](F.interpolate(h, scale_factor=2.0, mode="nearest"))  # [N x c x 2H x 2W]
        out = self.conv_out(F.silu(self.norm_out(h)))  # [N x C_in*p*p x H' x W']
        return F.pixel_shuffle(out, p) if p > 1 else out  # [N x C_in x H x W]


class LessonTinyUNet(Conditioned):
    """The lesson's minimal TinyUNet: conv blocks at two resolutions and one skip connection.

    x -> enc1 (C) -> down -> enc2 (2C) -> up -> cat(enc1) -> dec1 (C) -> out, with the time
    embedding (and class embedding, if any) added after enc1, enc2 and dec1.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        mults = cfg.channel_mults if len(cfg.channel_mults) > 1 else (1, 2)
        c1, c2 = cfg.base_channels * mults[0], cfg.base_channels * mults[1]
        g = cfg.norm_groups
        emb_dim = 4 * cfg.base_channels
        self.embed = Embedding(cfg.base_channels, emb_dim, cfg.num_classes)

        def block(ci: int, co: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(ci, co, 3, padding=1), nn.GroupNorm(g, co), nn.SiLU())

        self.enc1 = block(cfg.in_channels, c1)
        self.t1 = nn.Linear(emb_dim, c1)
        self.down = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.enc2 = block(c2, c2)
        self.t2 = nn.Linear(emb_dim, c2)
        self.up = nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1)
        self.dec1 = block(2 * c1, c1)
        self.t3 = nn.Linear(emb_dim, c1)
        self.out = nn.Conv2d(c1, cfg.in_channels, 3, padding=1)

    def projections(self) -> list[nn.Linear]:
        return [self.t1, self.t2, self.t3]

    def denoise(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        c1, c2, c3 = (ci[:, :, None, None] for ci in self.split_conditioning(c))  # t1(e), t2(e), t3(e)
        h1 = self.enc1(x) + c1  # [N x c1 x H x W]
        h2 = self.enc2(self.down(h1)) + c2  # [N x c2 x H/2 x W/2]
        h = self.dec1(torch.cat([self.up(h2), h1], dim=1)) + c3  # [N x c1 x H x W]
        return self.out(h)  # [N x C_in x H x W]


def build_model(cfg: ModelConfig) -> nn.Module:
    return UNet(cfg) if cfg.arch == "unet" else LessonTinyUNet(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
