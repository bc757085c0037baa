#!/usr/bin/python3
"""ablation_table.py - the ablation table of launch/ablate.sh, as Markdown.

    launch/ablation_table.py OUT_DIR > OUT_DIR/ablations.md

Reads OUT_DIR/ARM-sSEED/{val,test}.json (trainer eval) and
OUT_DIR/ARM-sSEED/ckpt/metrics.jsonl, and prints, per arm, the mean over
seeds with each seed's value in brackets, then one row per ablation of the
paper with its direction and what was measured here. A seed that is missing
is named; an arm with none is left out."""
import glob
import json
import os
import statistics
import sys

out = sys.argv[1] if len(sys.argv) > 1 else sys.exit("usage: ablation_table.py OUT_DIR")
runs = {}
for d in sorted(glob.glob(os.path.join(out, "*-s*"))):
    arm, seed = os.path.basename(d).rsplit("-s", 1)
    try:
        val, test = (json.load(open(os.path.join(d, f"{s}.json"))) for s in ("val", "test"))
    except (OSError, ValueError) as e:
        print(f"ablation_table: {d}: no eval ({e.__class__.__name__}); left out", file=sys.stderr)
        continue
    steps = [json.loads(line) for line in open(os.path.join(d, "ckpt", "metrics.jsonl")) if line.strip()]
    runs.setdefault(arm, {})[seed] = {"val": val, "test": test, "minutes": steps[-1]["time_s"] / 60,
                                      "steps": steps[-1]["step"],
                                      "step_ms": 1000 * statistics.median(m["step_s"] for m in steps)}
if not runs:
    sys.exit(f"error: {out}: no finished arm (ARM-sSEED/val.json and test.json)")

FIGURES = [  # (column, split, path in the eval JSON, lower is better)
    ("val diffusion loss", "val", ("diffusion_loss", "own_caption"), True),
    ("test diffusion loss", "test", ("diffusion_loss", "own_caption"), True),
    ("val caption gain %", "val", ("diffusion_loss", "caption_gain_pct"), False),
    ("test caption gain %", "test", ("diffusion_loss", "caption_gain_pct"), False),
    ("val image gain %", "val", ("captioning", "image_gain_pct"), False),
    ("test image gain %", "test", ("captioning", "image_gain_pct"), False),
    ("val retrieval top-1 %", "val", ("captioning", "retrieval_top1_pct"), False),
    ("test retrieval top-1 %", "test", ("captioning", "retrieval_top1_pct"), False),
    ("latent FD (val)", "val", ("generation", "latent_fd"), True),
    ("prompt retrieval top-1 %", "val", ("generation", "prompt_retrieval_top1_pct"), False),
]


def values(arm, split, path):
    vals = []
    for seed in sorted(runs[arm]):
        v = runs[arm][seed][split]
        for k in path:
            v = v[k]
        vals.append(v)
    return vals


def cell(vals, name):
    digits = 4 if "loss" in name else 1 if "FD" in name else 2      # losses, distances, percentages

    def fmt(x):
        return f"{x:.{digits}f}"
    return f"{fmt(statistics.mean(vals))} ({', '.join(fmt(v) for v in vals)})"


ORDER = ("base", "causal", "nolimit", "patch1", "unet", "unet4")
arms = [a for a in ORDER if a in runs] + sorted(a for a in runs if a not in ORDER)
print("Mean over seeds (each seed in brackets).\n")
print("| figure | " + " | ".join(f"{a} ({len(runs[a])} seeds)" for a in arms) + " |")
print("|---" * (len(arms) + 1) + "|")
for name, split, path, _ in FIGURES:
    print(f"| {name} | " + " | ".join(cell(values(a, split, path), name) for a in arms) + " |")
print("| steps; minutes, median ms per step of each run | " + " | ".join(
    f"{runs[a][min(runs[a])]['steps']}; " + ", ".join(f"{r['minutes']:.1f} min {r['step_ms']:.0f} ms" for r in runs[a].values())
    for a in arms) + " |")

# (ablation, paper, expected direction, the arm the paper prefers, the other, figures that show it)
ROWS = [
    ("causal -> bidirectional within an image", "FID 61.3 -> 20.3, CLIP 23.0 -> 24.0",
     "lower held-out diffusion loss, better samples", "base", "causal",
     ["val diffusion loss", "test diffusion loss", "latent FD (val)", "prompt retrieval top-1 %"]),
    ("noise limit off -> on (image-first pairs)", "CIDEr 25.4 -> 29.4 (U-Net)",
     "better captioning (retrieval, image gain)", "base", "nolimit",
     ["val image gain %", "test image gain %", "val retrieval top-1 %", "test retrieval top-1 %"]),
    ("patch 2 -> 1", "more patches, better", "lower diffusion loss per image, slower", "patch1", "base",
     ["val diffusion loss", "test diffusion loss", "latent FD (val)", "ms per step"]),
    ("linear -> U-Net patch encoder (same wall clock)", "0.16B: FID 37.6 -> 18.8, CIDEr 6.2 -> 15.3 (Table 7)",
     "lower held-out diffusion loss, better captioning", "unet", "base",
     ["val diffusion loss", "test diffusion loss", "val image gain %", "val retrieval top-1 %", "latent FD (val)"]),
    ("U-Net patch 2 -> 4 (1/4 of the positions per image)", "with the U-Net, larger patches lose little (Table 7)",
     "about the same quality from a quarter of the positions", "unet4", "unet",
     ["val diffusion loss", "val image gain %", "val retrieval top-1 %", "latent FD (val)", "ms per step"]),
]
print("\n| ablation | paper (0.76B, linear patches) | expected direction | here (the other arm -> the paper's choice; "
      "mean of seeds, spread in brackets) |")
print("|---|---|---|---|")
for what, paper, expect, good, bad, names in ROWS:
    if good not in runs or bad not in runs:
        continue
    parts = []
    for name in names:
        if name == "ms per step":       # the same positions per step: patch 1 spends 4x of them per image
            parts.append("median ms per step " + f"{statistics.mean(r['step_ms'] for r in runs[bad].values()):.0f} -> "
                         f"{statistics.mean(r['step_ms'] for r in runs[good].values()):.0f} (the same positions per "
                         "step, another number of them per image)")
            continue
        _, split, path, lower = next(f for f in FIGURES if f[0] == name)
        b, g = values(bad, split, path), values(good, split, path)
        mg, mb = statistics.mean(g), statistics.mean(b)
        verdict = "no difference" if mg == mb else "as the paper" if (mg < mb) == lower else "against the paper"
        if mg != mb and min(g) <= max(b) and min(b) <= max(g):
            verdict += ", within the seeds' spread"
        spread = f"{min(b):.4g}..{max(b):.4g} -> {min(g):.4g}..{max(g):.4g}"
        parts.append(f"{name} {statistics.mean(b):.4g} -> {statistics.mean(g):.4g} ({spread}; "
                     f"{verdict})")
    print(f"| {what} | {paper} | {expect} | " + "; ".join(parts) + " |")
