#!/usr/bin/python3
"""torch_ref.py - an independent PyTorch implementation of the Transfusion model
(docs/model.md), used as the test oracle of the C trainer and as
its speed peer.

It shares no code with the C side: it reads checkpoints and batch files with its
own safetensors reader (struct + json + numpy) and computes the model with a
deliberately plain implementation (an explicit L x L attention mask built from the
doc_start/hi rule, F.cross_entropy, autograd for the gradients).

It covers both image paths of docs/model.md section 3: the linear one (patch_in /
patch_out on latent patches) and, with "image_encoder": "unet" in config.json, the
U-Net one (diffusers' UNet2DModel layout with DownBlock2D/UpBlock2D and AdaGN,
"scale_shift": down blocks before the transformer, up blocks after it), written
with F.conv2d, F.group_norm (eps 1e-5), F.interpolate (nearest, 2x) on each image's
[C, h, w] map; its parameter shapes follow diffusers' constructor formulas, its
forward the skip stack, so the convolutions check the two against each other.

Run it with /usr/bin/python3 (Debian's python3-torch, torch 1.13, CPU).

Subcommands:
  make-batch --config CONFIG.json --out BATCH.safetensors --rows B --seq-len L --seed S [--mode test|bench]
      A random packed batch (docs/model.md section 7): several documents per row (text
      docs, caption-first and image-first pairs, sometimes a document with two
      images), pads at the end of every row.
  randomize --ckpt DIR --seed S
      Rewrites every tensor of DIR/*.safetensors with random values that exercise
      every parameter (matrices and convolution kernels N(0, 0.05), norms (RMSNorm and
      the U-Net's GroupNorm weights) 1 + 0.1 N, biases and pos_embed 0.1 N).
  init --config CONFIG.json --out DIR --seed S
      Writes a freshly initialized checkpoint (config.json + model.safetensors),
      docs/model.md section 6 initialization.
  loss --ckpt DIR --batch BATCH [--grads OUT.safetensors] [--dtype float64|float32]
      Loss and gradients of a checkpoint on a batch file; prints the JSON line
      {"loss","lm_loss","diffusion_loss","n_lm","n_latent","grad_norm"} and writes
      the gradients (F32) under each parameter's name.
  compare --ref A.safetensors --test B.safetensors --rtol R --atol T [--atol-rel C]
      Every tensor of A must be in B with the same shape, and every element
      |A-B| <= T + C * max|A| + R * |A|, with A's sign where |A| > T + C * max|A|
      (st_io.compare). The worst element is printed on failure.
  bench --config CONFIG.json --batch-rows B --seq-len L --steps N --threads T [--batch BATCH.safetensors]
      Eager float32 training steps (forward, backward, clip 1.0, AdamW) on a
      generated packed batch with about half of the positions in images; prints
      {"step_s","positions_per_s","threads",...} (step_s: median after 1 warmup).

Interpretations (shared with the C side):
  - doc_start(i): first position of the contiguous run of non-pad positions with
    doc[i]; a pad is its own document. hi(i): last patch of i's image run for a
    patch (i itself when the config's image_attention is "causal"), else i. Allowed keys of query i: [doc_start(i), hi(i)]. RoPE position
    i - doc_start(i), HF rotate_half, inv_freq_j = theta^(-2j/head_dim).
  - An image is a contiguous run of exactly (latent_size/patch_size)^2 patch
    positions with the same image index; patch k is the k-th position of the run.
  - alpha_bar in float64 cast to float32; x_t computed in float32. feat(t): t*f_i,
    cos, sin in float64, cast to float32.
  - LM targets at i with modality[i] == modality[i+1] == 0 and doc[i] == doc[i+1].
  - loss = CE_sum / N_lm + lambda * SE_sum / N_latent, N_latent = patches * C*p*p;
    a term whose count is 0 contributes 0.
  - U-Net: x_t of an image is its noised patches un-patchified; cell (gy, gx) of the
    last down map is patch k = gy*g + gx, and the transformer's output at patch k
    goes back to that cell. The U-Net runs on every image of the batch file; an
    image that no row uses gets a zero map and does not reach the loss.
"""
import argparse
import json
import math
import os
import resource
import sys
import time

import numpy as np
import torch

import torch.nn.functional as F

from st_io import atomic_write, compare, compare_norms, st_dtypes, st_read, st_write

# ----------------------------------------------------------------------------
# config and parameters

REQUIRED = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "latent_channels", "latent_size", "patch_size",
            "max_image_patches"]


def load_config(path):
    with open(path) as f:
        c = json.load(f)
    for k in REQUIRED:
        if k not in c:
            raise ValueError(f"{path}: missing field {k}")
    c.setdefault("rms_norm_eps", 1e-5)
    c.setdefault("rope_theta", 10000.0)
    c.setdefault("timestep_dim", 256)
    c.setdefault("diffusion_steps", 1000)
    c.setdefault("lambda_diffusion", 5.0)
    c.setdefault("bos_token_id", 1)
    c.setdefault("eos_token_id", 2)
    c.setdefault("boi_token_id", c["vocab_size"] - 2)
    c.setdefault("eoi_token_id", c["vocab_size"] - 1)
    c.setdefault("image_attention", "bidirectional")
    if c["image_attention"] not in ("bidirectional", "causal"):
        raise ValueError(f"{path}: image_attention must be bidirectional or causal")
    if c["hidden_size"] % c["num_attention_heads"] or (c["hidden_size"] // c["num_attention_heads"]) % 2:
        raise ValueError(f"{path}: hidden_size / num_attention_heads must be an even integer")
    if c["latent_size"] % c["patch_size"]:
        raise ValueError(f"{path}: patch_size must divide latent_size")
    if c["max_image_patches"] < patches_per_image(c):
        raise ValueError(f"{path}: max_image_patches < patches per image")
    c.setdefault("image_encoder", "linear")
    if c["image_encoder"] not in ("linear", "unet"):
        raise ValueError(f"{path}: image_encoder must be linear or unet")
    if c["image_encoder"] == "unet":
        # docs/model.md section 3, "The U-Net image path"
        c.setdefault("unet_channels", [64, 128])
        c.setdefault("unet_layers_per_block", 1)
        c.setdefault("unet_groups", 8)
        ch, r, gr = c["unet_channels"], c["unet_layers_per_block"], c["unet_groups"]
        # type() is int, not isinstance: JSON true would pass as 1
        if not isinstance(ch, list) or not ch or any(type(x) is not int or x <= 0 for x in ch):
            raise ValueError(f"{path}: unet_channels must be a non-empty list of positive integers")
        if type(r) is not int or r <= 0:
            raise ValueError(f"{path}: unet_layers_per_block must be a positive integer")
        if type(gr) is not int or gr <= 0 or any(x % gr for x in ch):
            raise ValueError(f"{path}: unet_groups must be a positive integer dividing every unet_channels entry")
        # n - 1 stride-2 downsamplings turn each patch into one cell of the g x g map
        if c["patch_size"] != 2 ** (len(ch) - 1):
            raise ValueError(f"{path}: with image_encoder unet, patch_size must be 2^(len(unet_channels) - 1)"
                             f" = {2 ** (len(ch) - 1)}")
    return c


def is_unet(c):
    return c["image_encoder"] == "unet"


def patches_per_image(c):
    g = c["latent_size"] // c["patch_size"]
    return g * g


def patch_dim(c):
    return c["latent_channels"] * c["patch_size"] ** 2


def patch_io_dim(c):
    """Width of what image.patch_in reads and image.patch_out writes: a latent patch
    (C*p*p) on the linear path, one cell of the U-Net's last map (c_{n-1}) with unet."""
    return c["unet_channels"][-1] if is_unet(c) else patch_dim(c)


def unet_shapes(c):
    """image.unet.* in storage order (docs/model.md section 6), diffusers' names.
    The channels follow diffusers' UNet2DModel constructor (its formulas for each
    block's input and skip widths), not the skip stack that unet_down/unet_up pop:
    the forward's convolutions then check that the two agree."""
    ch, r, d = c["unet_channels"], c["unet_layers_per_block"], c["hidden_size"]
    n, C = len(ch), c["latent_channels"]
    s = {}

    def conv(name, cout, cin, k=3):
        s[name + ".weight"] = (cout, cin, k, k)
        s[name + ".bias"] = (cout,)

    def norm(name, ch_):
        s[name + ".weight"] = (ch_,)
        s[name + ".bias"] = (ch_,)

    def resnet(p, cin, cout):
        norm(p + "norm1", cin)
        conv(p + "conv1", cout, cin)
        s[p + "time_emb_proj.weight"] = (2 * cout, d)
        s[p + "time_emb_proj.bias"] = (2 * cout,)
        norm(p + "norm2", cout)
        conv(p + "conv2", cout, cout)
        if cin != cout:
            conv(p + "conv_shortcut", cout, cin, 1)

    u = "image.unet."
    conv(u + "conv_in", ch[0], C)
    cout = ch[0]
    for i in range(n):
        cin, cout = cout, ch[i]
        for j in range(r):
            resnet(f"{u}down_blocks.{i}.resnets.{j}.", cin if j == 0 else cout, cout)
        if i < n - 1:
            conv(f"{u}down_blocks.{i}.downsamplers.0.conv", cout, cout)
    rev = ch[::-1]
    cout = rev[0]
    for j in range(n):
        # UpBlock2D(in_channels=rev[j+1] (rev[n-1] at the last), prev_output_channel,
        # out_channels=rev[j]): block k reads the previous map (prev for k = 0) and a
        # skip that is out_channels wide except for the last block's, in_channels
        prev, cout, cin = cout, rev[j], rev[min(j + 1, n - 1)]
        for k in range(r + 1):
            skip = cin if k == r else cout
            resnet(f"{u}up_blocks.{j}.resnets.{k}.", (prev if k == 0 else cout) + skip, cout)
        if j < n - 1:
            conv(f"{u}up_blocks.{j}.upsamplers.0.conv", cout, cout)
    norm(u + "conv_norm_out", ch[0])
    conv(u + "conv_out", C, ch[0])
    return s


def param_shapes(c):
    V, d, f = c["vocab_size"], c["hidden_size"], c["intermediate_size"]
    P, td = patch_io_dim(c), c["timestep_dim"]
    s = {"model.embed_tokens.weight": (V, d)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        s[p + "input_layernorm.weight"] = (d,)
        for n in "qkvo":
            s[p + f"self_attn.{n}_proj.weight"] = (d, d)
        s[p + "post_attention_layernorm.weight"] = (d,)
        s[p + "mlp.gate_proj.weight"] = (f, d)
        s[p + "mlp.up_proj.weight"] = (f, d)
        s[p + "mlp.down_proj.weight"] = (d, f)
    s["model.norm.weight"] = (d,)
    s["lm_head.weight"] = (V, d)
    s["image.patch_in.weight"] = (d, P)
    s["image.patch_in.bias"] = (d,)
    s["image.pos_embed"] = (c["max_image_patches"], d)
    s["image.time_embed.0.weight"] = (d, td)
    s["image.time_embed.0.bias"] = (d,)
    s["image.time_embed.2.weight"] = (d, d)
    s["image.time_embed.2.bias"] = (d,)
    if is_unet(c):
        s.update(unet_shapes(c))
    s["image.patch_out.weight"] = (P, d)
    s["image.patch_out.bias"] = (P,)
    return s


def is_norm(name):
    # the U-Net's GroupNorm weights (norm1, norm2, conv_norm_out) start at 1 like the RMSNorms
    return (name.endswith("layernorm.weight") or name == "model.norm.weight"
            or (name.startswith("image.unet.") and name.endswith(("norm1.weight", "norm2.weight",
                                                                   "conv_norm_out.weight"))))


def init_params(c, rng):
    out = {}
    std_out = 0.02 / math.sqrt(2 * c["num_hidden_layers"])
    for name, shape in param_shapes(c).items():
        if is_norm(name):
            a = np.ones(shape)
        elif name.endswith(".bias"):
            a = np.zeros(shape)
        else:
            std = std_out if (name.endswith("o_proj.weight") or name.endswith("down_proj.weight")) else 0.02
            a = rng.normal(0.0, std, shape)
        out[name] = a.astype(np.float32)
    return out


def load_ckpt(d):
    c = load_config(os.path.join(d, "config.json"))
    files = sorted(fn for fn in os.listdir(d) if fn.endswith(".safetensors"))
    if not files:
        raise ValueError(f"{d}: no *.safetensors file")
    w = {}
    for fn in files:
        t, _ = st_read(os.path.join(d, fn))
        for k, v in t.items():
            if k in w:
                raise ValueError(f"{d}/{fn}: tensor {k} appears twice")
            w[k] = v
    for name, shape in param_shapes(c).items():
        if name not in w:
            raise ValueError(f"{d}: missing tensor {name}")
        if tuple(w[name].shape) != tuple(shape):
            raise ValueError(f"{d}: tensor {name} has shape {list(w[name].shape)}, want {list(shape)}")
    return c, w


# ----------------------------------------------------------------------------
# diffusion pieces

def alpha_bar_table(T, s=0.008):
    """alpha_bar[t] for t = 0..T (index 0 unused), float64."""
    def f(t):
        return math.cos(((t / T) + s) / (1 + s) * math.pi / 2) ** 2
    ab = np.zeros(T + 1, dtype=np.float64)
    prod = 1.0
    for t in range(1, T + 1):
        beta = min(1.0 - f(t) / f(t - 1), 0.999)
        prod *= (1.0 - beta)
        ab[t] = prod
    ab[0] = 1.0
    return ab


def timestep_features(ts, dim):
    """feat(t) = [cos(t f_0..), sin(t f_0..)], computed in float64, cast to float32."""
    half = dim // 2
    fr = np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float64) / half)
    a = np.asarray(ts, dtype=np.float64)[:, None] * fr[None, :]
    return np.concatenate([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def patchify(x, p):
    """[n, C, h, w] -> [n, (h/p)*(w/p), C*p*p] with element (py*p + px)*C + c."""
    n, C, h, w = x.shape
    x = x.reshape(n, C, h // p, p, w // p, p)          # n c gy py gx px
    x = x.permute(0, 2, 4, 3, 5, 1)                    # n gy gx py px c
    return x.reshape(n, (h // p) * (w // p), p * p * C)


def unpatchify(x, p, C):
    """patchify's inverse: [n, g*g, C*p*p] -> [n, C, g*p, g*p]."""
    n, N, _ = x.shape
    g = math.isqrt(N)
    x = x.reshape(n, g, g, p, p, C)                    # n gy gx py px c
    x = x.permute(0, 5, 1, 3, 2, 4)                    # n c gy py gx px
    return x.reshape(n, C, g * p, g * p)


# ----------------------------------------------------------------------------
# batch layout -> index tensors

def prepare(c, batch, dtype):
    """Turns a batch (dict of numpy arrays, docs/model.md section 7) into the tensors the
    forward pass needs: attention mask, RoPE tables, gather indices, noised patch
    vectors, timestep features, LM targets, eps targets."""
    tokens, mod, doc, image = batch["tokens"], batch["modality"], batch["doc"], batch["image"]
    B, L = mod.shape
    N = patches_per_image(c)
    n_img = batch["latents"].shape[0]
    C, S = c["latent_channels"], c["latent_size"]
    if tuple(batch["latents"].shape) != (n_img, C, S, S) or batch["noise"].shape != batch["latents"].shape \
            or tuple(batch["timesteps"].shape) != (n_img,):
        raise ValueError(f"latents/noise/timesteps shapes do not match [n, {C}, {S}, {S}] / [n]")
    if tuple(tokens.shape) != (B, L) or doc.shape != mod.shape or image.shape != mod.shape:
        raise ValueError("tokens/modality/doc/image shapes differ")
    T = c["diffusion_steps"]
    V = c["vocab_size"]
    ds = np.zeros((B, L), dtype=np.int64)
    hi = np.zeros((B, L), dtype=np.int64)
    tok_idx, tok_ids = [], []
    pat_idx, pat_src, pat_k = [], [], []
    lm_idx, lm_tgt = [], []
    seen = set()
    for b in range(B):
        # doc_start: a pad is its own document; otherwise the contiguous run of
        # non-pad positions with the same doc value
        for i in range(L):
            m = mod[b, i]
            if m not in (0, 1, 2):
                raise ValueError(f"row {b} position {i}: modality {m}")
            if m != 2 and i > 0 and mod[b, i - 1] != 2 and doc[b, i - 1] == doc[b, i]:
                ds[b, i] = ds[b, i - 1]
            else:
                ds[b, i] = i
            hi[b, i] = i
        i = 0
        while i < L:
            m = mod[b, i]
            if m == 0:
                if not (0 <= tokens[b, i] < V):
                    raise ValueError(f"row {b} position {i}: token {tokens[b, i]} out of range")
                tok_idx.append(b * L + i)
                tok_ids.append(int(tokens[b, i]))
                if i + 1 < L and mod[b, i + 1] == 0 and doc[b, i + 1] == doc[b, i]:
                    if not (0 <= tokens[b, i + 1] < V):
                        raise ValueError(f"row {b} position {i + 1}: token out of range")
                    lm_idx.append(b * L + i)
                    lm_tgt.append(int(tokens[b, i + 1]))
                i += 1
            elif m == 1:
                img = int(image[b, i])
                j = i
                while j < L and mod[b, j] == 1 and image[b, j] == img:
                    j += 1
                if j - i != N:
                    raise ValueError(f"row {b} position {i}: image run of {j - i} patches, want {N}")
                if not (0 <= img < n_img) or img in seen:
                    raise ValueError(f"row {b} position {i}: bad or repeated image index {img}")
                seen.add(img)
                for k in range(N):
                    hi[b, i + k] = i + k if c["image_attention"] == "causal" else j - 1
                    pat_idx.append(b * L + i + k)
                    pat_src.append(img * N + k)
                    pat_k.append(k)
                i = j
            else:
                i += 1
    ts = batch["timesteps"].astype(np.int64)
    if n_img and (ts.min() < 1 or ts.max() > T):
        raise ValueError(f"timesteps outside 1..{T}")

    # noising: alpha_bar float64 -> float32, x_t in float32
    ab = torch.from_numpy(alpha_bar_table(T)[ts].astype(np.float32)).view(-1, 1, 1, 1)
    x0 = torch.from_numpy(batch["latents"].astype(np.float32))
    eps = torch.from_numpy(batch["noise"].astype(np.float32))
    xt = torch.sqrt(ab) * x0 + torch.sqrt(1 - ab) * eps
    p = c["patch_size"]
    P = patch_dim(c)
    feat = torch.from_numpy(timestep_features(ts, c["timestep_dim"]))

    j = np.arange(L)
    allowed = (j[None, None, :] >= ds[:, :, None]) & (j[None, None, :] <= hi[:, :, None])
    mask = torch.zeros((B, 1, L, L), dtype=dtype)
    mask.masked_fill_(~torch.from_numpy(allowed)[:, None], float("-inf"))

    hd = c["hidden_size"] // c["num_attention_heads"]
    inv = c["rope_theta"] ** (-2.0 * np.arange(hd // 2, dtype=np.float64) / hd)
    ang = (np.arange(L)[None, :] - ds).astype(np.float64)[:, :, None] * inv[None, None, :]
    ang = np.concatenate([ang, ang], axis=-1)
    L_ = lambda a: torch.tensor(a, dtype=torch.long)
    return {
        "B": B, "L": L, "n_img": n_img,
        "mask": mask,
        "cos": torch.from_numpy(np.cos(ang)).to(dtype)[:, None],
        "sin": torch.from_numpy(np.sin(ang)).to(dtype)[:, None],
        "tok_idx": L_(tok_idx), "tok_ids": L_(tok_ids),
        "pat_idx": L_(pat_idx), "pat_src": L_(pat_src), "pat_k": L_(pat_k),
        "pat_img": L_([s // N for s in pat_src]),
        "lm_idx": L_(lm_idx), "lm_tgt": L_(lm_tgt),
        "xt_patches": patchify(xt, p).reshape(-1, P).to(dtype) if n_img else torch.zeros(0, P, dtype=dtype),
        "eps_patches": patchify(eps, p).reshape(-1, P).to(dtype) if n_img else torch.zeros(0, P, dtype=dtype),
        "feat": feat.to(dtype),
        "ds": ds, "hi": hi,
    }


# ----------------------------------------------------------------------------
# the model (functional, over a dict of parameter tensors)

def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


# The U-Net image path (docs/model.md section 3): diffusers' UNet2DModel with
# DownBlock2D/UpBlock2D and resnet_time_scale_shift "scale_shift", its middle block
# replaced by the transformer. Maps are [n_img, channels, H, W], every image of the
# batch at once: GroupNorm and the convolutions act on each image alone.

GN_EPS = 1e-5


def gn(W, name, x, c):
    return F.group_norm(x, c["unet_groups"], W[name + ".weight"], W[name + ".bias"], eps=GN_EPS)


def conv(W, name, x, **kw):
    return F.conv2d(x, W[name + ".weight"], W[name + ".bias"], **kw)


def resnet_block(W, p, x, temb_act, c):
    """R(x; c_in -> c_out); temb_act = silu(temb), [n_img, d]."""
    h = conv(W, p + "conv1", F.silu(gn(W, p + "norm1", x, c)), padding=1)
    cout = h.shape[1]
    ss = F.linear(temb_act, W[p + "time_emb_proj.weight"], W[p + "time_emb_proj.bias"])
    scale, shift = ss[:, :cout, None, None], ss[:, cout:, None, None]   # scale first
    h = gn(W, p + "norm2", h, c) * (1 + scale) + shift
    h = conv(W, p + "conv2", F.silu(h), padding=1)
    # the 1x1 shortcut exists exactly when c_in != c_out (param_shapes)
    sc = conv(W, p + "conv_shortcut", x) if p + "conv_shortcut.weight" in W else x
    return sc + h


def unet_down(W, c, x, temb_act):
    """x_t [n_img, C, h, w] -> (u [n_img, c_{n-1}, g, g], the skip stack)."""
    n, r = len(c["unet_channels"]), c["unet_layers_per_block"]
    u = "image.unet."
    x = conv(W, u + "conv_in", x, padding=1)
    skips = [x]
    for i in range(n):
        for j in range(r):
            x = resnet_block(W, f"{u}down_blocks.{i}.resnets.{j}.", x, temb_act, c)
            skips.append(x)
        if i < n - 1:
            x = conv(W, f"{u}down_blocks.{i}.downsamplers.0.conv", x, stride=2, padding=1)
            skips.append(x)
    return x, skips


def unet_up(W, c, v, skips, temb_act):
    """v [n_img, c_{n-1}, g, g] (the transformer's patch outputs) -> eps_hat
    [n_img, C, h, w]. Pops skips (the list is consumed)."""
    n, r = len(c["unet_channels"]), c["unet_layers_per_block"]
    u = "image.unet."
    for j in range(n):
        for k in range(r + 1):
            # the map first, then the newest skip (diffusers' torch.cat order)
            v = resnet_block(W, f"{u}up_blocks.{j}.resnets.{k}.", torch.cat([v, skips.pop()], dim=1),
                             temb_act, c)
        if j < n - 1:
            v = conv(W, f"{u}up_blocks.{j}.upsamplers.0.conv",
                     F.interpolate(v, scale_factor=2.0, mode="nearest"), padding=1)
    assert not skips
    return conv(W, u + "conv_out", F.silu(gn(W, u + "conv_norm_out", v, c)), padding=1)


def forward_loss(W, c, prep):
    """Returns (loss, ce_sum, se_sum, n_lm, n_latent)."""
    B, L = prep["B"], prep["L"]
    d = c["hidden_size"]
    H = c["num_attention_heads"]
    hd = d // H
    eps = c["rms_norm_eps"]
    dtype = W["model.norm.weight"].dtype

    # input vectors: tokens, patches, pads (zero)
    x = torch.zeros(B * L, d, dtype=dtype)
    x = x.index_add(0, prep["tok_idx"], W["model.embed_tokens.weight"][prep["tok_ids"]])
    unet = is_unet(c)
    # (p is taken: the layer loop below names its weight prefix so)
    n_img, N, ps, C = prep["n_img"], patches_per_image(c), c["patch_size"], c["latent_channels"]
    if n_img:
        te = F.linear(prep["feat"], W["image.time_embed.0.weight"], W["image.time_embed.0.bias"])
        te = F.linear(F.silu(te), W["image.time_embed.2.weight"], W["image.time_embed.2.bias"])
        if unet:
            # the U-Net runs on every image of the file; one that no row uses gets
            # v = 0 below and none of its outputs reaches the loss
            te_act = F.silu(te)
            um, skips = unet_down(W, c, unpatchify(prep["xt_patches"].view(n_img, N, -1), ps, C), te_act)
            # cell (gy, gx) of the last map is patch k = gy * g + gx: row img * N + k
            pin = um.permute(0, 2, 3, 1).reshape(n_img * N, -1)
        else:
            pin = prep["xt_patches"]
        pv = F.linear(pin, W["image.patch_in.weight"], W["image.patch_in.bias"])
        pv = pv[prep["pat_src"]] + W["image.pos_embed"][prep["pat_k"]] + te[prep["pat_img"]]
        x = x.index_add(0, prep["pat_idx"], pv)
    x = x.view(B, L, d)

    cos, sin, mask = prep["cos"], prep["sin"], prep["mask"]
    scale = 1.0 / math.sqrt(hd)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = F.linear(h, W[p + "self_attn.q_proj.weight"]).view(B, L, H, hd).transpose(1, 2)
        k = F.linear(h, W[p + "self_attn.k_proj.weight"]).view(B, L, H, hd).transpose(1, 2)
        v = F.linear(h, W[p + "self_attn.v_proj.weight"]).view(B, L, H, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        att = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale + mask, dim=-1)
        o = torch.matmul(att, v).transpose(1, 2).reshape(B, L, d)
        x = x + F.linear(o, W[p + "self_attn.o_proj.weight"])
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        g = F.linear(h, W[p + "mlp.gate_proj.weight"])
        u = F.linear(h, W[p + "mlp.up_proj.weight"])
        x = x + F.linear(F.silu(g) * u, W[p + "mlp.down_proj.weight"])
    hf = rms_norm(x, W["model.norm.weight"], eps).reshape(B * L, d)

    n_lm = int(prep["lm_idx"].numel())
    n_latent = int(prep["pat_idx"].numel()) * patch_dim(c)
    zero = hf.sum() * 0.0
    if n_lm:
        logits = F.linear(hf[prep["lm_idx"]], W["lm_head.weight"])
        ce = F.cross_entropy(logits, prep["lm_tgt"], reduction="sum")
    else:
        ce = zero
    if n_latent:
        pred = F.linear(hf[prep["pat_idx"]], W["image.patch_out.weight"], W["image.patch_out.bias"])
        if unet:
            # patch outputs back to their cells: v [n_img, c_{n-1}, g, g]
            gr = c["latent_size"] // ps
            v = torch.zeros(n_img * N, pred.shape[1], dtype=dtype).index_add(0, prep["pat_src"], pred)
            v = v.view(n_img, gr, gr, -1).permute(0, 3, 1, 2)
            eps_hat = unet_up(W, c, v, skips, te_act)
            pred = patchify(eps_hat, ps).reshape(n_img * N, -1)[prep["pat_src"]]
        se = (pred - prep["eps_patches"][prep["pat_src"]]).pow(2).sum()
    else:
        se = zero
    loss = zero
    if n_lm:
        loss = loss + ce / n_lm
    if n_latent:
        loss = loss + c["lambda_diffusion"] * se / n_latent
    return loss, ce, se, n_lm, n_latent


# ----------------------------------------------------------------------------
# batch generation

def _gen_rows(c, B, L, rng, mode):
    """Packed rows as python lists. mode "test": forced mix of document kinds per
    row and 1..4 pads at the end; mode "bench": about half of the positions in
    images, pads only where a document does not fit."""
    V, N = c["vocab_size"], patches_per_image(c)
    bos, eos, boi, eoi = c["bos_token_id"], c["eos_token_id"], c["boi_token_id"], c["eoi_token_id"]
    specials = {bos, eos, boi, eoi}
    normal = np.array([t for t in range(V) if t not in specials])
    rows = []          # each: list of (modality, token, doc, image_local)
    n_img = 0
    img_pos = tot_pos = 0
    for r in range(B):
        row = []
        if mode == "test":
            kinds = ["text", "capfirst", "imgfirst"]
            kinds = kinds[r % 3:] + kinds[:r % 3]
            if r % 3 == 1:
                kinds.append("twoimg")
            reserve = int(rng.integers(1, 5))
            txt_max, cap_max = 12, 6
        else:
            kinds = []
            reserve = 0
            txt_max, cap_max = 40, 16
        dnum = 0
        while True:
            room = L - len(row) - reserve
            if kinds:
                kind = kinds.pop(0)
            elif mode == "test":
                kind = ["text", "capfirst", "imgfirst", "twoimg"][int(rng.choice(4, p=[0.35, 0.3, 0.2, 0.15]))]
            else:
                if img_pos < 0.5 * max(tot_pos, 1):
                    kind = "capfirst" if rng.random() < 0.8 else "imgfirst"
                else:
                    kind = "text"
            need = {"text": 3, "capfirst": N + 5, "imgfirst": N + 5, "twoimg": 2 * N + 7}[kind]
            if room < need:
                # try smaller kinds before giving up
                if room >= 3 and kind != "text" and mode == "test":
                    kind, need = "text", 3
                elif room >= N + 5 and kind == "twoimg":
                    kind, need = "capfirst", N + 5
                else:
                    break

            def txt(n):
                return [(0, int(rng.choice(normal)), dnum, -1) for _ in range(n)]

            def img():
                nonlocal n_img
                k = n_img
                n_img += 1
                return [(0, boi, dnum, -1)] + [(1, 0, dnum, k)] * N + [(0, eoi, dnum, -1)]

            if kind == "text":
                n = int(rng.integers(1, min(txt_max, room - 2) + 1))
                d = [(0, bos, dnum, -1)] + txt(n) + [(0, eos, dnum, -1)]
            elif kind in ("capfirst", "imgfirst"):
                n = int(rng.integers(1, min(cap_max, room - N - 4) + 1))
                if kind == "capfirst":
                    d = [(0, bos, dnum, -1)] + txt(n) + img() + [(0, eos, dnum, -1)]
                else:
                    d = [(0, bos, dnum, -1)] + img() + txt(n) + [(0, eos, dnum, -1)]
            else:  # a document with two images: BOS text BOI..EOI text BOI..EOI EOS
                n = int(rng.integers(1, min(cap_max, room - 2 * N - 6) + 1))
                n1 = int(rng.integers(0, n + 1))
                d = ([(0, bos, dnum, -1)] + txt(n1) + img() + txt(n - n1) + img()
                     + [(0, eos, dnum, -1)])
            row += d
            dnum += 1
            img_pos += sum(1 for e in d if e[0] == 1)
            tot_pos += len(d)
        last_doc = max(dnum - 1, 0)
        while len(row) < L:
            row.append((2, int(rng.integers(0, V)), last_doc, -1))   # pads: doc "any"
        # junk token ids at patch positions ("anything elsewhere")
        row = [(m, int(rng.integers(0, V)) if m == 1 else t, dd, im) for (m, t, dd, im) in row]
        rows.append(row)
    return rows, n_img


def gen_batch(c, B, L, rng, mode="test"):
    rows, n = _gen_rows(c, B, L, rng, mode)
    C, S, T = c["latent_channels"], c["latent_size"], c["diffusion_steps"]
    arr = np.array(rows, dtype=np.int64).reshape(B, L, 4)
    return {
        "tokens": arr[:, :, 1].astype(np.int32),
        "modality": arr[:, :, 0].astype(np.int32),
        "doc": arr[:, :, 2].astype(np.int32),
        "image": arr[:, :, 3].astype(np.int32),
        "latents": rng.standard_normal((n, C, S, S)).astype(np.float32),
        "noise": rng.standard_normal((n, C, S, S)).astype(np.float32),
        "timesteps": rng.integers(1, T + 1, size=n).astype(np.int32),
    }


# ----------------------------------------------------------------------------
# subcommands

def cmd_make_batch(a):
    c = load_config(a.config)
    rng = np.random.default_rng(a.seed)
    b = gen_batch(c, a.rows, a.seq_len, rng, a.mode)
    st_write(a.out, b)
    mod = b["modality"]
    print(json.dumps({"rows": a.rows, "seq_len": a.seq_len, "images": int(b["latents"].shape[0]),
                      "tokens": int((mod == 0).sum()), "patches": int((mod == 1).sum()),
                      "pads": int((mod == 2).sum())}))


def cmd_randomize(a):
    rng = np.random.default_rng(a.seed)
    files = sorted(fn for fn in os.listdir(a.ckpt) if fn.endswith(".safetensors"))
    if not files:
        sys.exit(f"{a.ckpt}: no *.safetensors file")
    for fn in files:
        path = os.path.join(a.ckpt, fn)
        t, meta = st_read(path)
        dts = st_dtypes(path)
        out = {}
        for name, v in t.items():
            if is_norm(name):
                r = 1.0 + 0.1 * rng.standard_normal(v.shape)
            elif name.endswith(".bias") or name == "image.pos_embed":
                r = 0.1 * rng.standard_normal(v.shape)
            elif v.ndim >= 2:
                r = 0.05 * rng.standard_normal(v.shape)
            else:
                r = 0.1 * rng.standard_normal(v.shape)
            out[name] = r.astype(np.float32)
        st_write(path, out, dts, meta)
    print(f"randomized {len(files)} file(s) in {a.ckpt}")


def cmd_init(a):
    c = load_config(a.config)
    os.makedirs(a.out, exist_ok=True)
    w = init_params(c, np.random.default_rng(a.seed))
    st_write(os.path.join(a.out, "model.safetensors"), w)
    atomic_write(os.path.join(a.out, "config.json"), [(json.dumps(c, indent=2) + "\n").encode()])
    print(f"wrote {a.out}/config.json and {a.out}/model.safetensors")


def cmd_loss(a):
    dtype = {"float64": torch.float64, "float32": torch.float32}[a.dtype]
    c, w = load_ckpt(a.ckpt)
    batch, _ = st_read(a.batch)
    for k in ["tokens", "modality", "doc", "image", "latents", "noise", "timesteps"]:
        if k not in batch:
            sys.exit(f"{a.batch}: missing tensor {k}")
    names = list(param_shapes(c).keys())
    W = {n: torch.tensor(w[n], dtype=dtype, requires_grad=True) for n in names}
    prep = prepare(c, batch, dtype)
    loss, ce, se, n_lm, n_latent = forward_loss(W, c, prep)
    loss.backward()
    gsq = sum(float((W[n].grad.double() ** 2).sum()) for n in names)
    res = {"loss": float(loss), "lm_loss": float(ce) / n_lm if n_lm else 0.0,
           "diffusion_loss": float(se) / n_latent if n_latent else 0.0,
           "n_lm": n_lm, "n_latent": n_latent, "grad_norm": math.sqrt(gsq)}
    if a.grads:
        st_write(a.grads, {n: W[n].grad.float().numpy() for n in names})
    print(json.dumps(res))


def cmd_compare(a):
    sys.exit(1 if compare(a.ref, a.test, a.rtol, a.atol, "grad ", a.atol_rel) else 0)


def cmd_compare_norms(a):
    sys.exit(1 if compare_norms(a.ref, a.test, a.max_rel, a.min_rel, "grad ") else 0)


def cmd_bench(a):
    # OpenBLAS reads OMP_NUM_THREADS when torch is imported: the caller sets it
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    c = load_config(a.config)
    rng = np.random.default_rng(a.seed)
    # --batch: a file both sides time (bench/bench_vs_torch.sh), else generated
    batch = st_read(a.batch)[0] if a.batch else gen_batch(c, a.batch_rows, a.seq_len, rng, "bench")
    prep = prepare(c, batch, torch.float32)
    w = init_params(c, rng)
    W = {n: torch.tensor(v, requires_grad=True) for n, v in w.items()}
    # decayed: the matrices and (U-Net) convolution kernels, not embed_tokens or pos_embed
    decay = [t for n, t in W.items()
             if t.dim() >= 2 and n not in ("model.embed_tokens.weight", "image.pos_embed")]
    no_decay = [t for n, t in W.items()
                if not (t.dim() >= 2 and n not in ("model.embed_tokens.weight", "image.pos_embed"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    params = list(W.values())
    times, losses = [], []
    for step in range(a.steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        # --precision bf16: PyTorch's own mixed precision (autocast runs the
        # matrix products in bf16; the weights, Adam and the losses stay float32)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            loss = forward_loss(W, c, prep)[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        losses.append(float(loss))
        if step > 0:
            times.append(dt)
    step_s = float(np.median(times)) if times else float("nan")
    # the BLAS this process really ran on (torch may link the system
    # libblas.so.3, the reference BLAS or OpenBLAS): the basenames of the
    # mapped libraries that have "blas" in their name, read after the timing
    with open("/proc/self/maps") as f:
        fields = [line.split(None, 5) for line in f]
    mapped = {os.path.basename(x[5].strip()) for x in fields if len(x) == 6}
    blas = ",".join(sorted(n for n in mapped if "blas" in n))
    mod = batch["modality"]
    print(json.dumps({"step_s": step_s, "positions_per_s": a.batch_rows * a.seq_len / step_s,
                      "threads": a.threads, "steps": a.steps, "precision": a.precision,
                      "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                      "image_fraction": float((mod == 1).mean()),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                      "first_loss": losses[0], "last_loss": losses[-1],
                      "blas": blas}))


def main():
    ap = argparse.ArgumentParser(description="PyTorch reference of the Transfusion model contract")
    sp = ap.add_subparsers(dest="cmd", required=True)
    p = sp.add_parser("make-batch")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", default="test", choices=["test", "bench"])
    p.set_defaults(fn=cmd_make_batch)
    p = sp.add_parser("randomize")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_randomize)
    p = sp.add_parser("init")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_init)
    p = sp.add_parser("loss")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--batch", required=True)
    p.add_argument("--grads")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.set_defaults(fn=cmd_loss)
    p = sp.add_parser("compare")
    p.add_argument("--ref", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--rtol", type=float, required=True)
    p.add_argument("--atol", type=float, required=True)
    p.add_argument("--atol-rel", type=float, default=0.0)
    p.set_defaults(fn=cmd_compare)
    p = sp.add_parser("compare-norms")
    p.add_argument("--ref", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--max-rel", type=float, required=True)
    p.add_argument("--min-rel", type=float, default=0.0)
    p.set_defaults(fn=cmd_compare_norms)
    p = sp.add_parser("bench")
    p.add_argument("--config", required=True)
    p.add_argument("--batch-rows", type=int, required=True)
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch", help="time this batch file instead of a generated one")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: under torch.autocast (the peer of trainer --precision bf16)")
    p.set_defaults(fn=cmd_bench)
    a = ap.parse_args()
    try:
        a.fn(a)
    except (ValueError, OSError) as e:
        print(f"torch_ref.py {a.cmd}: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
