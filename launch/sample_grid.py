#!/usr/bin/python3
"""sample_grid.py - the sample grid of report.py and ablation_samples.sh:
one row per prompt, its training image first, then two samples of each
column (a checkpoint, or an ablation arm).

    launch/sample_grid.py --data DIR --prompts FILE --out PNG LABEL=FOLDER...

FOLDER/p{j}/sample{0,1}-0.webp are the samples of prompt j (`trainer
sample --n 2 --out FOLDER/p{j}`); --data holds the train-*.tar shards the
prompts were taken from. The grid is drawn with PIL at twice its size."""
import argparse
import glob
import os
import tarfile

from PIL import Image, ImageDraw

S, GAP = 64, 4                                   # image side, gap between cells


def read_prompts(path):
    return [l.strip() for l in open(path) if l.strip() and not l.startswith("#")]


def training_images(data, prompts):
    """caption -> its training image, for the prompts only"""
    found = {}
    for shard in sorted(glob.glob(os.path.join(data, "train-*.tar"))):
        with tarfile.open(shard) as t:
            members = {m.name: m for m in t.getmembers()}
            for name, m in members.items():
                if not name.endswith(".txt"):
                    continue
                caption = t.extractfile(m).read().decode().strip()
                image = next((members[name[:-4] + ext] for ext in (".webp", ".png") if name[:-4] + ext in members), None)
                if caption in prompts and image:
                    found[caption] = Image.open(t.extractfile(image)).convert("RGB").resize((S, S))
    return found


def draw(columns, prompts, train_images, out_png):
    """columns: [(label, folder)]"""
    cols = 1 + 2 * len(columns)
    head = 16
    grid = Image.new("RGB", (cols * (S + GAP) + GAP, head + len(prompts) * (S + GAP) + GAP), "white")
    pen = ImageDraw.Draw(grid)
    pen.text((GAP, 2), "training", fill="black")
    for k, (label, _) in enumerate(columns):
        pen.text((GAP + (1 + 2 * k) * (S + GAP), 2), label, fill="black")
    for j, prompt in enumerate(prompts):
        y = head + GAP + j * (S + GAP)
        if prompt in train_images:
            grid.paste(train_images[prompt], (GAP, y))
        for k, (_, folder) in enumerate(columns):
            for q in range(2):
                sample = Image.open(os.path.join(folder, f"p{j}", f"sample{q}-0.webp")).convert("RGB").resize((S, S))
                grid.paste(sample, (GAP + (1 + 2 * k + q) * (S + GAP), y))
    tmp = out_png + ".tmp"                       # never a half-written PNG under the real name
    grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(tmp, format="PNG")
    os.replace(tmp, out_png)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("columns", nargs="+", help="LABEL=FOLDER")
    a = p.parse_args()
    prompts = read_prompts(a.prompts)
    draw([tuple(c.split("=", 1)) for c in a.columns], prompts, training_images(a.data, prompts), a.out)
