#!/usr/bin/python3
"""vae_ref.py - an independent PyTorch implementation of diffusers' AutoencoderKL
(the KL-regularized VAE of Stable Diffusion), used as the test oracle of the C
VAE (vae_service) and as its speed peer.

It shares no code with the C side and does not import diffusers: the
architecture is written out below with diffusers' module names, so that
state_dict() names, tensor shapes and config.json fields are those of a real
diffusers `AutoencoderKL` folder (config.json + diffusion_pytorch_model.safetensors),
and real checkpoints (e.g. stabilityai/sd-vae-ft-mse) load. Safetensors files are
read and written by the small reader/writer below (struct + json + numpy).

Run it with /usr/bin/python3 (Debian's python3-torch, torch 1.13, CPU).

Architecture (diffusers Encoder / Decoder / UNetMidBlock2D / ResnetBlock2D /
Attention / Downsample2D / Upsample2D, every GroupNorm eps 1e-6 with affine):
  ResnetBlock2D(in, out):  h = conv2(silu(norm2(conv1(silu(norm1(x))))))
                           out = (conv_shortcut(x) if in != out else x) + h
                           conv1/conv2 3x3 pad 1, conv_shortcut 1x1 (with bias).
  Attention(C) (mid block): h = group_norm(x) flattened to [n, H*W, C];
                           q, k, v = to_q(h), to_k(h), to_v(h); one head;
                           a = softmax(q k^T / sqrt(C)) v; out = x + to_out.0(a).
  Downsample2D:            pad right and bottom by 1 (zeros), conv 3x3 stride 2 pad 0.
  Upsample2D:              nearest 2x, then conv 3x3 pad 1.
  Encoder: conv_in 3x3 (in_channels -> boc[0]); down_blocks[i] (i over boc):
           layers_per_block resnets (boc[i-1] -> boc[i] for the first, boc[0]
           before block 0), downsamplers.0 for all but the last block;
           mid_block = resnets.0, attentions.0, resnets.1 at boc[-1];
           conv_norm_out, silu, conv_out 3x3 -> 2 * latent_channels.
  quant_conv 1x1 (2C -> 2C) if use_quant_conv; mean, logvar = first / last C
  channels; logvar = clamp(logvar, -30, 20).
  post_quant_conv 1x1 (C -> C) if use_post_quant_conv.
  Decoder: conv_in 3x3 (C -> boc[-1]); mid_block as above; up_blocks[i] over
           reversed(boc): layers_per_block + 1 resnets (previous block's
           channels -> rboc[i] for the first), upsamplers.0 for all but the
           last; conv_norm_out, silu, conv_out 3x3 -> out_channels.
  Down/up factor f = 2^(len(block_out_channels) - 1); H and W must be multiples of f.
  No scaling_factor / shift_factor is applied anywhere here: `mean` is the raw
  posterior mean; the trainer applies (z - shift_factor) * scaling_factor itself.

Loss of train-step (the C side must match exactly):
  x: images [n, 3, H, W]; eps: [n, C, h, w] (given in the input file)
  mean, logvar = encode(x)              (logvar clamped to [-30, 20])
  z            = mean + exp(0.5 * logvar) * eps
  recon        = decode(z)
  rec_loss     = sum (recon - x)^2 / (n * 3 * H * W)                     (L2, the default)
               or sum |recon - x| / (n * 3 * H * W)                      (--loss l1)
  kl           = sum_{n,c,h,w} 0.5 * (mean^2 + exp(logvar) - 1 - logvar) / (n * 3 * H * W)
               (= mean over the batch of the per-image KL sum, divided by the
                number of pixel values 3*H*W of one image)
  loss         = rec_loss + kl_weight * kl
  d|u|/du is taken as sign(u) (0 at 0); the clamp passes the gradient where
  -30 <= logvar <= 20 (torch.clamp, bounds inclusive) and 0 outside.

Subcommands:
  init --config CFG.json --out DIR --seed S [--random-affine] [--weights-dtype F32|BF16]
      Writes DIR/config.json (all fields, with _class_name "AutoencoderKL") and
      DIR/diffusion_pytorch_model.safetensors. PyTorch's default module init
      (Conv2d / Linear: kaiming_uniform(a=sqrt(5)) weights, U(+-1/sqrt(fan_in))
      biases; GroupNorm weight 1, bias 0), torch.manual_seed(S). --random-affine
      then sets every GroupNorm weight to 1 + 0.1 N, GroupNorm bias to 0.1 N and
      every conv / linear bias to 0.1 N, so a parity test exercises them.
  make-images --vae DIR --n N --size S [--seed S] --out IN.safetensors
      `images` F32 [N, 3, S, S] uniform in [-1, 1] (smoothed so they look a bit
      like images) and `eps` F32 [N, C, S/f, S/f] standard normal.
  forward --vae DIR --images IN.safetensors --out OUT.safetensors [--dtype float64|float32]
      OUT: `mean`, `logvar` [n, C, H/f, W/f] (after quant_conv and the clamp)
      and `recon` = decode(mean) [n, 3, H, W], all written as F32.
  train-step --vae DIR --images IN.safetensors --out GRADS.safetensors --kl-weight W
             [--loss l2|l1] [--seed S] [--dtype float64|float32]
      One loss evaluation as above (float64 by default); `eps` is taken from IN
      (if IN has none, eps = numpy default_rng(S).standard_normal, float64).
      Prints {"loss","rec_loss","kl","min_abs_residual"} as one JSON line and writes the gradient
      of loss for every parameter under its diffusers name (F32).
  compare --ref A --test B --rtol R --atol T [--atol-rel C]
      Every tensor of A must be in B with the same shape, and every element
      |A-B| <= T + C * max|A| + R * |A|, with A's sign where |A| > T + C * max|A|
      (st_io.compare; an all-zero A needs |B| <= T: the gradient of every
      to_k.bias is mathematically 0, softmax ignores a per-query constant, and
      float64 autograd leaves ~1e-21 rounding noise there). Prints "ok NAME
      (ratio R, err E)" or "FAIL NAME: why" with the worst element per tensor;
      exit 1 on any failure.
  bench --config CFG.json --size S --batch N --threads T [--steps K] [--train] [--precision fp32|bf16]
      Encode throughput: encoder + quant_conv, mean only, float32, eval,
      torch.no_grad; median over K batches after one warmup batch. With --train:
      one training step (encode, sample, decode, loss above with kl_weight 1e-6,
      backward, AdamW lr 1e-4 default betas / weight decay 0.01). Prints one JSON
      line {"images_per_s","size","threads","batch",...}.
  info --config CFG.json [--names]
      Parameter counts (encoder, decoder, quant convs, total) and optionally
      every tensor name with its shape.

Loading: missing or unexpected tensors and shape mismatches are errors. The
pre-0.14 diffusers attention names (query / key / value / proj_attn, as in
older checkpoint uploads) are renamed to to_q / to_k / to_v / to_out.0, and
[C, C, 1, 1] attention weights (original LDM layout) are squeezed to [C, C].
F32, F16 and BF16 tensors are accepted.
"""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch

import torch.nn as nn
import torch.nn.functional as F

from st_io import compare, st_read, st_write

WEIGHTS = "diffusion_pytorch_model.safetensors"
GN_EPS = 1e-6


class GroupNorm32(nn.GroupNorm):
    """GroupNorm of bf16 maps in float32 (as Stable Diffusion's own code):
    under the benchmark's bf16 autocast the convolutions hand it bf16 maps,
    which PyTorch 1.13's CPU group_norm does not take. float32 and float64
    maps pass as they are."""

    def forward(self, x):
        return super().forward(x.float() if x.dtype == torch.bfloat16 else x)

# ----------------------------------------------------------------------------
# config

DEFAULTS = {  # diffusers AutoencoderKL.__init__ defaults
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"],
    "block_out_channels": [64],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 32,
    "scaling_factor": 0.18215,
    "shift_factor": None,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}


def load_config(path):
    """Reads a config.json (a VAE folder or a bare config file); unknown fields ignored."""
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    with open(path) as f:
        raw = json.load(f)
    c = dict(DEFAULTS)
    for k in DEFAULTS:
        if k in raw:
            c[k] = raw[k]
    boc = c["block_out_channels"] = [int(x) for x in c["block_out_channels"]]
    nb = len(boc)
    c["down_block_types"] = list(c["down_block_types"])
    c["up_block_types"] = list(c["up_block_types"])
    # diffusers replicates a 1-element default; a real config lists one per block
    if len(c["down_block_types"]) == 1 and nb > 1 and "down_block_types" not in raw:
        c["down_block_types"] *= nb
    if len(c["up_block_types"]) == 1 and nb > 1 and "up_block_types" not in raw:
        c["up_block_types"] *= nb

    def bad(msg):
        raise ValueError(f"{path}: {msg}")
    if nb < 1 or any(x <= 0 for x in boc):
        bad("block_out_channels must be a non-empty list of positive integers")
    if c["down_block_types"] != ["DownEncoderBlock2D"] * nb:
        bad(f"down_block_types must be {nb} x DownEncoderBlock2D")
    if c["up_block_types"] != ["UpDecoderBlock2D"] * nb:
        bad(f"up_block_types must be {nb} x UpDecoderBlock2D")
    if c["act_fn"] not in ("silu", "swish"):
        bad(f"act_fn {c['act_fn']!r} not supported (silu only)")
    for k in ("in_channels", "out_channels", "layers_per_block", "latent_channels",
              "norm_num_groups"):
        if not isinstance(c[k], int) or c[k] <= 0:
            bad(f"{k} must be a positive integer")
    g = c["norm_num_groups"]
    for ch in boc:
        if ch % g:
            bad(f"norm_num_groups {g} does not divide block channels {ch}")
    return c


def full_config(c):
    out = {"_class_name": "AutoencoderKL"}
    out.update(c)
    return out


def down_factor(c):
    return 2 ** (len(c["block_out_channels"]) - 1)


# ----------------------------------------------------------------------------
# model (diffusers module names)

class ResnetBlock2D(nn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        self.norm1 = GroupNorm32(groups, cin, eps=GN_EPS, affine=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=1, padding=1)
        self.norm2 = GroupNorm32(groups, cout, eps=GN_EPS, affine=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1, stride=1, padding=0) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))  # dropout 0
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h  # output_scale_factor 1


class Attention(nn.Module):
    """diffusers Attention as built by UNetMidBlock2D for the VAE: one head of
    dimension C, group_norm first, residual connection, rescale_output_factor 1."""

    def __init__(self, ch, groups):
        super().__init__()
        self.group_norm = GroupNorm32(groups, ch, eps=GN_EPS, affine=True)
        self.to_q = nn.Linear(ch, ch, bias=True)
        self.to_k = nn.Linear(ch, ch, bias=True)
        self.to_v = nn.Linear(ch, ch, bias=True)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch, bias=True)])  # to_out.1 is Dropout

    def forward(self, x):
        n, c, hh, ww = x.shape
        h = self.group_norm(x).reshape(n, c, hh * ww).transpose(1, 2)  # [n, HW, C]
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)
        w = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * (c ** -0.5), dim=-1)
        a = self.to_out[0](torch.bmm(w, v))
        return x + a.transpose(1, 2).reshape(n, c, hh, ww)


class UNetMidBlock2D(nn.Module):
    def __init__(self, ch, groups, add_attention=True):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, groups), ResnetBlock2D(ch, ch, groups)])
        self.attentions = nn.ModuleList([Attention(ch, groups)]) if add_attention else None

    def forward(self, x):
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Downsample2D(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample2D(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=1, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownEncoderBlock2D(nn.Module):
    def __init__(self, cin, cout, layers, groups, add_downsample):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(cin if i == 0 else cout, cout, groups)
                                      for i in range(layers)])
        self.downsamplers = nn.ModuleList([Downsample2D(cout)]) if add_downsample else None

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock2D(nn.Module):
    def __init__(self, cin, cout, layers, groups, add_upsample):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(cin if i == 0 else cout, cout, groups)
                                      for i in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if add_upsample else None

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        boc, g, L = c["block_out_channels"], c["norm_num_groups"], c["layers_per_block"]
        self.conv_in = nn.Conv2d(c["in_channels"], boc[0], 3, stride=1, padding=1)
        blocks, cout = [], boc[0]
        for i, ch in enumerate(boc):
            cin, cout = cout, ch
            blocks.append(DownEncoderBlock2D(cin, cout, L, g, add_downsample=i < len(boc) - 1))
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = UNetMidBlock2D(boc[-1], g, c["mid_block_add_attention"])
        self.conv_norm_out = GroupNorm32(g, boc[-1], eps=GN_EPS, affine=True)
        self.conv_out = nn.Conv2d(boc[-1], 2 * c["latent_channels"], 3, padding=1)  # double_z

    def forward(self, x):
        x = self.conv_in(x)
        for b in self.down_blocks:
            x = b(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        boc, g, L = c["block_out_channels"], c["norm_num_groups"], c["layers_per_block"]
        rboc = list(reversed(boc))
        self.conv_in = nn.Conv2d(c["latent_channels"], rboc[0], 3, stride=1, padding=1)
        self.mid_block = UNetMidBlock2D(rboc[0], g, c["mid_block_add_attention"])
        blocks, cout = [], rboc[0]
        for i, ch in enumerate(rboc):
            cin, cout = cout, ch
            blocks.append(UpDecoderBlock2D(cin, cout, L + 1, g, add_upsample=i < len(rboc) - 1))
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_norm_out = GroupNorm32(g, boc[0], eps=GN_EPS, affine=True)
        self.conv_out = nn.Conv2d(boc[0], c["out_channels"], 3, padding=1)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for b in self.up_blocks:
            x = b(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.config = c
        C = c["latent_channels"]
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quant_conv = nn.Conv2d(2 * C, 2 * C, 1) if c["use_quant_conv"] else None
        self.post_quant_conv = nn.Conv2d(C, C, 1) if c["use_post_quant_conv"] else None

    def encode(self, x):
        """Returns (mean, logvar), logvar clamped to [-30, 20]."""
        f = down_factor(self.config)
        if x.dim() != 4 or x.shape[1] != self.config["in_channels"] \
                or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"images must be [n, {self.config['in_channels']}, H, W] "
                             f"with H, W multiples of {f}; got {list(x.shape)}")
        m = self.encoder(x)
        if self.quant_conv is not None:
            m = self.quant_conv(m)
        mean, logvar = torch.chunk(m, 2, dim=1)
        return mean, torch.clamp(logvar, -30.0, 20.0)

    def decode(self, z):
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


# ----------------------------------------------------------------------------
# checkpoint I/O

_OLD_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _rename_legacy(name):
    parts = name.split(".")
    if len(parts) >= 2 and "attentions" in parts and parts[-2] in _OLD_ATTN:
        parts[-2] = _OLD_ATTN[parts[-2]]
        return ".".join(parts)
    return name


def load_vae(d, dtype=torch.float64):
    c = load_config(d)
    torch.manual_seed(0)
    model = AutoencoderKL(c)
    tensors, _ = st_read(os.path.join(d, WEIGHTS))
    sd = model.state_dict()
    got = {}
    for name, a in tensors.items():
        new = _rename_legacy(name)
        if new in sd and ".attentions." in new and a.ndim == 4 and sd[new].dim() == 2:
            a = a.reshape(a.shape[0], a.shape[1])
        got[new] = a
    missing = [k for k in sd if k not in got]
    extra = [k for k in got if k not in sd]
    if missing or extra:
        raise ValueError(f"{d}: {WEIGHTS} does not match config.json: missing "
                         f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                         f"{extra[:5]}{'...' if len(extra) > 5 else ''}")
    for k, t in sd.items():
        if tuple(got[k].shape) != tuple(t.shape):
            raise ValueError(f"{d}: tensor {k}: shape {list(got[k].shape)}, want {list(t.shape)}")
    model.load_state_dict({k: torch.from_numpy(np.asarray(got[k], dtype=np.float32))
                           for k in sd})
    return model.to(dtype), c


def params_np(model):
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------
# commands

def cmd_init(a):
    c = load_config(a.config)
    torch.manual_seed(a.seed)
    model = AutoencoderKL(c)
    if a.random_affine:
        with torch.no_grad():
            for mod in model.modules():
                if isinstance(mod, nn.GroupNorm):
                    mod.weight.copy_(1.0 + 0.1 * torch.randn_like(mod.weight))
                    mod.bias.copy_(0.1 * torch.randn_like(mod.bias))
                elif isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.bias is not None:
                    mod.bias.copy_(0.1 * torch.randn_like(mod.bias))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(full_config(c), f, indent=2)
        f.write("\n")
    st_write(os.path.join(a.out, WEIGHTS), params_np(model), a.weights_dtype,
             meta={"format": "pt"})
    print(json.dumps({"out": a.out, "parameters": sum(p.numel() for p in model.parameters())}))


def cmd_make_images(a):
    c = load_config(a.vae)
    f = down_factor(c)
    if a.size % f:
        raise ValueError(f"--size must be a multiple of {f}")
    rng = np.random.default_rng(a.seed)
    x = rng.uniform(-1.0, 1.0, size=(a.n, c["in_channels"], a.size, a.size))
    # a light 3x3 box blur so neighbouring pixels correlate, rescaled into [-1, 1]
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    x = sum(p[:, :, i:i + a.size, j:j + a.size] for i in range(3) for j in range(3)) / 9.0
    x = x / max(1e-12, np.abs(x).max())
    eps = rng.standard_normal(size=(a.n, c["latent_channels"], a.size // f, a.size // f))
    st_write(a.out, {"images": x, "eps": eps})


def _dtype(s):
    return torch.float64 if s == "float64" else torch.float32


def cmd_forward(a):
    dt = _dtype(a.dtype)
    model, c = load_vae(a.vae, dt)
    t, _ = st_read(a.images)
    x = torch.from_numpy(t["images"]).to(dt)
    with torch.no_grad():
        mean, logvar = model.encode(x)
        recon = model.decode(mean)
    st_write(a.out, {"mean": mean.numpy(), "logvar": logvar.numpy(), "recon": recon.numpy()})


def vae_loss(model, x, eps, kl_weight, loss="l2"):
    """The train-step loss (see the top of the file). Returns (loss, rec, kl,
    min |recon - x|): the L1 gradient flips sign where recon crosses x, so an
    L1 gradient comparison is only meaningful when no residual is near zero."""
    mean, logvar = model.encode(x)
    z = mean + torch.exp(0.5 * logvar) * eps
    recon = model.decode(z)
    denom = x.numel()  # n * 3 * H * W
    rec = (torch.abs(recon - x) if loss == "l1" else (recon - x) ** 2).sum() / denom
    kl = 0.5 * (mean * mean + torch.exp(logvar) - 1.0 - logvar).sum() / denom
    return rec + kl_weight * kl, rec, kl, float(torch.abs(recon - x).min())


def cmd_train_step(a):
    dt = _dtype(a.dtype)
    model, c = load_vae(a.vae, dt)
    t, _ = st_read(a.images)
    x = torch.from_numpy(t["images"]).to(dt)
    f = down_factor(c)
    shape = (x.shape[0], c["latent_channels"], x.shape[2] // f, x.shape[3] // f)
    if "eps" in t:
        eps = torch.from_numpy(t["eps"]).to(dt)
        if tuple(eps.shape) != shape:
            raise ValueError(f"{a.images}: eps shape {list(eps.shape)}, want {list(shape)}")
    else:
        eps = torch.from_numpy(np.random.default_rng(a.seed).standard_normal(shape)).to(dt)
    model.zero_grad(set_to_none=True)
    loss, rec, kl, min_residual = vae_loss(model, x, eps, a.kl_weight, a.loss)
    loss.backward()
    grads = {}
    for k, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        grads[k] = g.detach().numpy()
    st_write(a.out, grads)
    print(json.dumps({"loss": float(loss), "rec_loss": float(rec), "kl": float(kl),
                      "min_abs_residual": min_residual}))


def cmd_compare(a):
    sys.exit(1 if compare(a.ref, a.test, a.rtol, a.atol, "", a.atol_rel) else 0)


def cmd_bench(a):
    # OpenBLAS / OpenMP read OMP_NUM_THREADS at import: the caller may set it too
    torch.set_num_threads(a.threads)
    c = load_config(a.config)
    f = down_factor(c)
    if a.size % f:
        raise ValueError(f"--size must be a multiple of {f}")
    torch.manual_seed(0)
    model = AutoencoderKL(c).float()
    x = torch.rand(a.batch, c["in_channels"], a.size, a.size) * 2 - 1
    eps = torch.randn(a.batch, c["latent_channels"], a.size // f, a.size // f)
    times, losses = [], []
    if a.train:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for step in range(a.steps + 1):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            # bf16: PyTorch's own mixed precision (autocast runs the convolutions in bf16)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
                loss = vae_loss(model, x, eps, 1e-6)[0]
            loss.backward()
            opt.step()
            dt = time.perf_counter() - t0
            losses.append(float(loss))
            if step > 0:
                times.append(dt)
    else:
        model.eval()
        with torch.no_grad():
            for step in range(a.steps + 1):
                t0 = time.perf_counter()
                mean, _ = model.encode(x)
                dt = time.perf_counter() - t0
                if step > 0:
                    times.append(dt)
    med = float(np.median(times))
    res = {"images_per_s": a.batch / med, "size": a.size, "threads": a.threads,
           "batch": a.batch, "mode": "train" if a.train else "encode",
           "batch_s": med, "steps": a.steps,
           "parameters": sum(p.numel() for p in model.parameters()),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if a.train:
        res["first_loss"], res["last_loss"] = losses[0], losses[-1]
    print(json.dumps(res))


def cmd_info(a):
    c = load_config(a.config)
    model = AutoencoderKL(c)

    def count(m):
        return sum(p.numel() for p in m.parameters()) if m is not None else 0
    res = {"encoder": count(model.encoder), "decoder": count(model.decoder),
           "quant_conv": count(model.quant_conv), "post_quant_conv": count(model.post_quant_conv),
           "total": count(model), "tensors": len(model.state_dict()),
           "down_factor": down_factor(c)}
    print(json.dumps(res))
    if a.names:
        for k, v in model.state_dict().items():
            print(k, list(v.shape))


def main():
    ap = argparse.ArgumentParser(description="PyTorch reference of diffusers' AutoencoderKL")
    sp = ap.add_subparsers(dest="cmd", required=True)
    p = sp.add_parser("init")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-affine", action="store_true")
    p.add_argument("--weights-dtype", default="F32", choices=["F32", "BF16"])
    p.set_defaults(fn=cmd_init)
    p = sp.add_parser("make-images")
    p.add_argument("--vae", required=True, help="VAE folder or config file")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_make_images)
    p = sp.add_parser("forward")
    p.add_argument("--vae", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.set_defaults(fn=cmd_forward)
    p = sp.add_parser("train-step")
    p.add_argument("--vae", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--kl-weight", type=float, required=True)
    p.add_argument("--loss", default="l2", choices=["l2", "l1"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.set_defaults(fn=cmd_train_step)
    p = sp.add_parser("compare")
    p.add_argument("--ref", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--rtol", type=float, required=True)
    p.add_argument("--atol", type=float, required=True)
    p.add_argument("--atol-rel", type=float, default=0.0)
    p.set_defaults(fn=cmd_compare)
    p = sp.add_parser("bench")
    p.add_argument("--config", required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--train", action="store_true")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.set_defaults(fn=cmd_bench)
    p = sp.add_parser("info")
    p.add_argument("--config", required=True)
    p.add_argument("--names", action="store_true")
    p.set_defaults(fn=cmd_info)
    a = ap.parse_args()
    try:
        a.fn(a)
    except (ValueError, KeyError, OSError) as e:
        print(f"vae_ref.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
