#!/usr/bin/env python3
"""torch_cuda_step.py - the PyTorch peer of `trainer bench --device cuda`: the
same model and training step (forward, backward, clip 1.0, AdamW) on a GPU, in
bfloat16 autocast over float32 weights and Adam state, attention by flex
attention with the model's mask (docs/model.md section 2: query i sees keys doc_start(i)..hi(i), a
block mask that skips fully masked tiles), the loss compiled by torch.compile.
Batch generation, parameter shapes and initialization are tests/torch_ref.py's.

  --write-batch PATH   write the generated batch (docs/model.md section 7) and exit, so
                       that `trainer bench --batch PATH` times the same batch
  --batch PATH         time this batch file instead of generating one

Prints one JSON line {"step_s","positions_per_s","compile_s",...}; needs
PyTorch >= 2.5 with CUDA (flex attention), which Debian's python3-torch is not:
run it with a CUDA build of PyTorch (PYTHON=... in bench/gpu-check.sh)."""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import torch_ref as ref  # noqa: E402
from st_io import st_read, st_write  # noqa: E402


def forward_loss(W, c, t, block_mask, flex):
    """The model of docs/model.md; t holds the batch's device tensors."""
    B, L, d, H = t["B"], t["L"], c["hidden_size"], c["num_attention_heads"]
    hd, eps = d // H, c["rms_norm_eps"]
    x = torch.zeros(B * L, d, device="cuda", dtype=torch.bfloat16)
    x = x.index_add(0, t["tok_idx"], W["model.embed_tokens.weight"][t["tok_ids"]].to(torch.bfloat16))
    te = F.linear(t["feat"], W["image.time_embed.0.weight"], W["image.time_embed.0.bias"])
    te = F.linear(F.silu(te), W["image.time_embed.2.weight"], W["image.time_embed.2.bias"])
    pv = F.linear(t["xt_patches"], W["image.patch_in.weight"], W["image.patch_in.bias"])
    pv = pv[t["pat_src"]] + W["image.pos_embed"][t["pat_k"]] + te[t["pat_img"]]
    x = x.index_add(0, t["pat_idx"], pv.to(torch.bfloat16)).view(B, L, d)
    cos, sin = t["cos"], t["sin"]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = ref.rms_norm(x, W[p + "input_layernorm.weight"], eps)
        qkv = F.linear(h, torch.cat([W[p + f"self_attn.{n}_proj.weight"] for n in "qkv"]))
        q, k, v = (z.view(B, L, H, hd).transpose(1, 2) for z in qkv.chunk(3, dim=-1))
        q = q * cos + ref.rotate_half(q) * sin
        k = k * cos + ref.rotate_half(k) * sin
        o = flex(q.to(torch.bfloat16), k.to(torch.bfloat16), v.to(torch.bfloat16), block_mask=block_mask)
        x = x + F.linear(o.transpose(1, 2).reshape(B, L, d), W[p + "self_attn.o_proj.weight"])
        h = ref.rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        gu = F.linear(h, torch.cat([W[p + "mlp.gate_proj.weight"], W[p + "mlp.up_proj.weight"]]))
        g, u = gu.chunk(2, dim=-1)
        x = x + F.linear(F.silu(g) * u, W[p + "mlp.down_proj.weight"])
    hf = ref.rms_norm(x, W["model.norm.weight"], eps).reshape(B * L, d)
    logits = F.linear(hf[t["lm_idx"]], W["lm_head.weight"])
    ce = F.cross_entropy(logits.float(), t["lm_tgt"], reduction="sum")
    pred = F.linear(hf[t["pat_idx"]], W["image.patch_out.weight"], W["image.patch_out.bias"])
    se = (pred.float() - t["eps_patches"][t["pat_src"]]).pow(2).sum()
    return ce / t["n_lm"] + c["lambda_diffusion"] * se / t["n_latent"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch-rows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch")
    ap.add_argument("--write-batch")
    a = ap.parse_args()
    c = ref.load_config(a.config)
    rng = np.random.default_rng(a.seed)
    if a.batch:
        batch, _ = st_read(a.batch)
    else:
        batch = ref.gen_batch(c, a.batch_rows, a.seq_len, rng, "bench")
    if a.write_batch:
        st_write(a.write_batch, batch)
        return
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    if not torch.cuda.is_available():
        sys.exit("torch_cuda_step.py: PyTorch sees no CUDA device")
    prep = ref.prepare(c, batch, torch.float32)
    B, L = prep["B"], prep["L"]
    t = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in prep.items() if k != "mask"}
    t["n_lm"], t["n_latent"] = int(prep["lm_idx"].numel()), int(prep["pat_idx"].numel()) * ref.patch_dim(c)
    lo = torch.from_numpy(prep["ds"]).cuda().int()
    hi = torch.from_numpy(prep["hi"]).cuda().int()

    def mask_mod(b, h, q, kv):
        return (kv >= lo[b, q]) & (kv <= hi[b, q])

    block_mask = create_block_mask(mask_mod, B, None, L, L, device="cuda")
    flex = torch.compile(flex_attention)
    W = {n: torch.tensor(v, device="cuda", requires_grad=True) for n, v in ref.init_params(c, rng).items()}
    decay = [w for n, w in W.items() if w.dim() == 2 and n not in ("model.embed_tokens.weight", "image.pos_embed")]
    rest = [w for n, w in W.items() if not (w.dim() == 2 and n not in ("model.embed_tokens.weight", "image.pos_embed"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    loss_fn = torch.compile(lambda W: forward_loss(W, c, t, block_mask, flex))
    params = list(W.values())

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(W)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        return loss

    t0 = time.perf_counter()
    first = float(step())                               # compiles
    step()
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(a.steps):
        s0 = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - s0)
    step_s = float(np.median(times))
    print(json.dumps({"step_s": step_s, "min_step_s": min(times), "positions_per_s": B * L / step_s,
                      "compile_s": compile_s, "first_loss": first, "last_loss": float(loss),
                      "torch": torch.__version__, "gpu": torch.cuda.get_device_name(),
                      "image_fraction": float((batch["modality"] == 1).mean())}))


if __name__ == "__main__":
    main()
