#!/usr/bin/python3
"""report.py - writes RUN/report.md and its pictures from what report.sh
gathered: the run's metrics, checkpoints and final evaluations, the samples
of the picked checkpoints and the captions of held-out images (in --work).

    launch/report.py --run RUN --work DIR --data DIR --prompts FILE --checkpoints STEP_DIR... [--ablations DIR]

Called by launch/report.sh; the pictures are drawn with PIL."""
import argparse
import glob
import json
import os
import statistics

from PIL import Image, ImageDraw
from sample_grid import GAP, S, draw, read_prompts, training_images

p = argparse.ArgumentParser()
p.add_argument("--run", required=True)
p.add_argument("--work", required=True)
p.add_argument("--data", required=True)
p.add_argument("--prompts", required=True)
p.add_argument("--checkpoints", nargs="+", required=True)
p.add_argument("--ablations")
a = p.parse_args()
out = os.path.join(a.run, "report")


def step_of(d):
    return int(os.path.basename(d).split("_")[1])


def webp(path):
    return Image.open(path).convert("RGB").resize((S, S))


# ---------------------------------------------------------------- samples
prompts = read_prompts(a.prompts)
draw([(f"step {step_of(ck)}", os.path.join(a.work, os.path.basename(ck))) for ck in a.checkpoints], prompts,
     training_images(a.data, prompts), os.path.join(out, "samples.png"))

# ---------------------------------------------------------------- captions
caption_rows = {}
for split in ("val", "test"):
    rows = []
    for line in open(os.path.join(a.work, split, "captions.tsv")):
        path, said = line.rstrip("\n").split("\t", 1)
        true = open(os.path.splitext(path)[0] + ".txt").read().strip()
        rows.append((path, true, said))
    strip = Image.new("RGB", (len(rows) * (2 * S + GAP) + GAP, 2 * S + 2 * GAP), "white")
    d = ImageDraw.Draw(strip)
    for i, (path, _, _) in enumerate(rows):
        strip.paste(webp(path).resize((2 * S, 2 * S), Image.NEAREST), (GAP + i * (2 * S + GAP), GAP))
        d.text((GAP + i * (2 * S + GAP) + 2, GAP), str(i + 1), fill="black")
    strip.save(os.path.join(out, f"captions-{split}.png"))
    caption_rows[split] = rows

# ---------------------------------------------------------------- figures
ck = os.path.join(a.run, "ckpt")
lines = [json.loads(l) for l in open(os.path.join(ck, "metrics.jsonl")) if l.strip()]
steps = {m["step"]: m for m in lines if "eval" not in m}
evals = {m["step"]: m for m in lines if "eval" in m}
last = os.path.realpath(a.checkpoints[-1])
state = json.load(open(os.path.join(last, "trainer_state.json")))
config = json.load(open(os.path.join(last, "config.json")))
index = json.load(open(os.path.join(last, "model.safetensors.index.json")))
info = state["loader"]["info"]
final = {}
for f in sorted(glob.glob(os.path.join(a.run, "eval", "*-s*.json"))):
    final[os.path.basename(f)[:-5]] = json.load(open(f))


def g(e, *path):
    for k in path:
        e = e.get(k) if isinstance(e, dict) else None
    return e


def num(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


md = [f"# Training report: `{a.run}`", ""]
t_train = max(m["time_s"] + (g(m, "eval", "seconds") or 0) for m in lines)
eval_s = sum(g(m, "eval", "seconds") or 0 for m in evals.values())
md += [f"{state['step']} steps in {t_train / 60:.1f} minutes on {state['world_size']} ranks "
       f"({eval_s / 60:.1f} of them in {len(evals)} held-out evaluations), "
       f"{state['positions_seen'] / 1e6:.1f} M positions. Every figure below is on data the model never "
       "trained on: `val` (unseen renderings of seen concepts and styles), `test` (unseen concepts) and "
       "held-out text; the samples are of training captions.", ""]

if final:
    first = next(iter(final.values()))
    md += ["## Final held-out figures", "",
           f"`trainer eval` of the last checkpoint ({first['weights']} weights), on {first['images']} images per "
           f"split, {first['diffusion_loss']['timesteps_per_image']} timesteps per image, with each evaluation "
           "seed (its own noise, timesteps, pairings and candidates).", ""]
    names = sorted(final)
    rows = [
        ("diffusion loss, own caption", ("diffusion_loss", "own_caption"), 4),
        ("diffusion loss, another's caption", ("diffusion_loss", "other_caption"), 4),
        ("diffusion loss, no caption", ("diffusion_loss", "no_caption"), 4),
        ("**caption gain %** (uniform t)", ("diffusion_loss", "caption_gain_pct"), 2),
    ] + [(f"caption gain %, t {b['t_from']}-{b['t_to']}", ("diffusion_loss", "buckets", i, "caption_gain_pct"), 2)
         for i, b in enumerate(final[names[0]]["diffusion_loss"]["buckets"])] + [
        ("caption loss after own image (nats/token)", ("captioning", "own_image_loss"), 3),
        ("caption loss after another image", ("captioning", "other_image_loss"), 3),
        ("**image gain %**", ("captioning", "image_gain_pct"), 2),
        ("**caption retrieval top-1 %** (of 16; chance 6.25)", ("captioning", "retrieval_top1_pct"), 1),
        ("caption retrieval top-5 % (chance 31.25)", ("captioning", "retrieval_top5_pct"), 1),
        ("text bits per byte (held-out text)", ("text", "text_bpb"), 3),
        ("latent Fréchet distance of 16 generated images", ("generation", "latent_fd"), 0),
        ("... between two halves of the real images (floor)", ("generation", "latent_fd_real_halves"), 0),
        ("prompt retrieval of generated images top-1 % (chance 6.25)", ("generation", "prompt_retrieval_top1_pct"), 1),
    ]
    md += ["| figure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, path, digits in rows:
        def get(e, path=path):
            for k in path:
                e = e[k] if isinstance(k, int) else e.get(k, {})
            return e if isinstance(e, (int, float)) else None
        md.append(f"| {label} | " + " | ".join(num(get(final[n]), digits) for n in names) + " |")
    md.append("")
    targets = [("val", ("diffusion_loss", "caption_gain_pct"), 5, "caption gain"),
               ("val", ("captioning", "retrieval_top1_pct"), 25, "caption retrieval top-1"),
               ("val", ("captioning", "image_gain_pct"), 5, "image gain")]
    md += ["Targets of the recipe (issue 13):", ""]
    for split, path, goal, label in targets:
        vals = [g(final[n], *path) for n in names if n.startswith(split)]
        ok = all(v is not None and v >= goal for v in vals)
        md.append(f"- {split} {label} >= {goal}: {', '.join(num(v) for v in vals)} ({'met' if ok else 'not met'})")
    for path, label in ((("diffusion_loss", "caption_gain_pct"), "caption gain"),
                        (("captioning", "image_gain_pct"), "image gain")):
        vals = [g(final[n], *path) for n in names if n.startswith("test")]
        spread = max(vals) - min(vals)
        md.append(f"- test {label} above zero beyond the spread of the seeds: {', '.join(num(v) for v in vals)} "
                  f"(spread {spread:.2f}; {'met' if min(vals) > spread else 'not met'})")
    md.append("- samples that a person recognises (the concept's colour and shape) for at least 8 of the 16 prompts: "
              "judged by eye from the sample grid below; no figure here measures it")
    md.append("")

md += ["## Loss curves", "", "![loss](report/loss.png)", "",
       "Train losses per step (rank 0's log of the global batch)" + (
           "; the points are the held-out diffusion loss (own caption) and the held-out caption loss after its "
           f"own image, on {next(iter(evals.values()))['eval']['images']} images of "
           f"`{next(iter(evals.values()))['eval']['images_from']}`." if evals else "."), ""]
if evals:
    md += ["## Held-out figures over training", "", "![eval](report/loss-eval.png)", "",
           "| step | minutes | val diffusion loss | caption gain % | image gain % | caption top-1 % | text bpb "
           "| latent FD | prompt top-1 % |", "|---|---|---|---|---|---|---|---|---|"]
    for s in sorted(evals):
        e = evals[s]["eval"]
        md.append(f"| {s} | {evals[s]['time_s'] / 60:.1f} | {num(g(e, 'diffusion_loss', 'own_caption'), 4)} | "
                  f"{num(g(e, 'diffusion_loss', 'caption_gain_pct'))} | {num(g(e, 'captioning', 'image_gain_pct'))} | "
                  f"{num(g(e, 'captioning', 'retrieval_top1_pct'), 1)} | {num(g(e, 'text', 'text_bpb'), 3)} | "
                  f"{num(g(e, 'generation', 'latent_fd'), 0)} | {num(g(e, 'generation', 'prompt_retrieval_top1_pct'), 1)} |")
    md.append("")

md += ["## Samples", "", "![samples](report/samples.png)", "",
       f"Rows: the {len(prompts)} captions of `{a.prompts}` (training captions; the first column is that "
       "training image). Then two samples per checkpoint (DDPM, 250 steps, guidance 5, the EMA weights where the run "
       "keeps them), with the "
       "same seeds at every checkpoint, so that a column pair shows the same noise learning its way to an image.", ""]
for j, pr in enumerate(prompts):
    md.append(f"{j + 1}. {pr}")
md.append("")

md += ["## Captions of held-out images", ""]
for split, what in (("val", "unseen renderings of seen concepts"), ("test", "unseen concepts")):
    md += [f"`{split}` ({what}), greedy captions of the last checkpoint (`trainer caption`):", "",
           f"![{split}](report/captions-{split}.png)", "", "| # | true caption | the model's caption |", "|---|---|---|"]
    for i, (_, true, said) in enumerate(caption_rows[split]):
        md.append(f"| {i + 1} | {true} | {said} |")
    md.append("")

speeds = [m["positions_per_s"] for m in steps.values()]
step_s = [m["step_s"] for m in steps.values()]
ema = state.get("ema", {}).get("decay")
md += ["## Settings and speed", "", "| setting | value |", "|---|---|",
       f"| model | {index['metadata']['param_count'] / 1e6:.2f} M parameters: hidden {config['hidden_size']}, "
       f"{config['num_hidden_layers']} layers, {config['num_attention_heads']} heads, MLP "
       f"{config['intermediate_size']}, patch {info['patch_size']} ({info['patches_per_image']} patches per image) |",
       f"| batch | {state['world_size']} ranks x {state['grad_accum']} x {state['rows_per_rank']} rows x "
       f"{state['seq_len']} positions |",
       f"| optimizer | AdamW, lr {state['lr_schedule']['lr']:.3g}, {state['lr_schedule']['warmup_steps']} warmup "
       f"steps, cosine to {state['lr_schedule']['min_lr_ratio']:.2g} x lr at step "
       f"{state['lr_schedule']['total_steps']} |",
       f"| EMA | {'%.4g' % ema if ema else 'off'} |",
       f"| data | {info['images']} training images, {info['text_documents']} text documents; image fraction "
       f"{info['image_fraction']}, caption first {info['caption_first']}, caption dropout {info['drop_caption']}, "
       f"noise limit {'on' if info['noise_limit'] else 'off'} |",
       f"| speed | median {statistics.median(speeds):.0f} positions/s ({min(speeds):.0f}..{max(speeds):.0f}), "
       f"median step {statistics.median(step_s) * 1000:.0f} ms |",
       f"| time | {t_train / 60:.1f} minutes of training, {eval_s / 60:.1f} of them evaluating |", ""]

if a.ablations and os.path.exists(os.path.join(a.ablations, "ablations.md")):
    md += ["## The paper's ablations at small scale", "",
           f"`launch/ablate.sh` ({a.ablations}): each arm trained on 1 rank with the same steps, data and seeds, "
           "then measured by `trainer eval` on 128 `val` and `test` images.", "",
           open(os.path.join(a.ablations, "ablations.md")).read().strip(), ""]

tmp = os.path.join(a.run, ".report.md.tmp")
with open(tmp, "w") as f:
    f.write("\n".join(md) + "\n")
    f.flush()
    os.fsync(f.fileno())
os.replace(tmp, os.path.join(a.run, "report.md"))
