#!/usr/bin/python3
"""torch_ref.py - an independent PyTorch implementation of the Transfusion model
(docs/model.md), used as the test oracle of the C trainer and as
its speed peer.

It shares no code with the C side: it reads checkpoints and batch files with its
own safetensors reader (struct + json + numpy) and computes the model with a
deliberately plain implementation (an explicit L x L attention mask built from the
doc_start/hi rule, F.cross_entropy, autograd for the gradients).

Run it with /usr/bin/python3 (Debian's python3-torch, torch 1.13, CPU).

Subcommands:
  make-batch --config CONFIG.json --out BATCH.safetensors --rows B --seq-len L --seed S [--mode test|bench]
      A random packed batch (docs/model.md section 7): several documents per row (text
      docs, caption-first and image-first pairs, sometimes a document with two
      images), pads at the end of every row.
  randomize --ckpt DIR --seed S
      Rewrites every tensor of DIR/*.safetensors with random values that exercise
      every parameter (matrices N(0, 0.05), norms 1 + 0.1 N, biases and pos_embed
      0.1 N).
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

from st_io import atomic_write, compare, st_dtypes, st_read, st_write

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
    return c


def patches_per_image(c):
    g = c["latent_size"] // c["patch_size"]
    return g * g


def patch_dim(c):
    return c["latent_channels"] * c["patch_size"] ** 2


def param_shapes(c):
    V, d, f = c["vocab_size"], c["hidden_size"], c["intermediate_size"]
    P, td = patch_dim(c), c["timestep_dim"]
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
    s["image.patch_out.weight"] = (P, d)
    s["image.patch_out.bias"] = (P,)
    return s


def is_norm(name):
    return name.endswith("layernorm.weight") or name == "model.norm.weight"


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
    if prep["n_img"]:
        te = F.linear(prep["feat"], W["image.time_embed.0.weight"], W["image.time_embed.0.bias"])
        te = F.linear(F.silu(te), W["image.time_embed.2.weight"], W["image.time_embed.2.bias"])
        pv = F.linear(prep["xt_patches"], W["image.patch_in.weight"], W["image.patch_in.bias"])
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
    decay = [t for n, t in W.items()
             if t.dim() == 2 and n not in ("model.embed_tokens.weight", "image.pos_embed")]
    no_decay = [t for n, t in W.items()
                if not (t.dim() == 2 and n not in ("model.embed_tokens.weight", "image.pos_embed"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    params = list(W.values())
    times, losses = [], []
    for step in range(a.steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = forward_loss(W, c, prep)[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        losses.append(float(loss))
        if step > 0:
            times.append(dt)
    step_s = float(np.median(times)) if times else float("nan")
    mod = batch["modality"]
    print(json.dumps({"step_s": step_s, "positions_per_s": a.batch_rows * a.seq_len / step_s,
                      "threads": a.threads, "steps": a.steps,
                      "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                      "image_fraction": float((mod == 1).mean()),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                      "first_loss": losses[0], "last_loss": losses[-1]}))


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
    p = sp.add_parser("bench")
    p.add_argument("--config", required=True)
    p.add_argument("--batch-rows", type=int, required=True)
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch", help="time this batch file instead of a generated one")
    p.set_defaults(fn=cmd_bench)
    a = ap.parse_args()
    try:
        a.fn(a)
    except (ValueError, OSError) as e:
        print(f"torch_ref.py {a.cmd}: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
