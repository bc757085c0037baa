#!/usr/bin/python3
"""make_image_shards.py - generated image-caption WebDataset shards for tests.

Each sample is a PNG of a coloured circle or square on white with the caption
"a <colour> <shape>". With --bad, the last shard also holds one sample of each
kind of bad input that a dataset run must skip and count: a truncated PNG, a
file that is not an image, an empty image, a missing caption, a caption that
is not UTF-8, and a duplicate key.

  make_image_shards.py --out DIR --shards K --per-shard N --size S [--seed S] [--bad]
"""
import argparse, io, random, struct, tarfile, zlib

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (230, 200, 30), "purple": (140, 50, 170)}


def png(width, height, rgb_rows):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\0" + bytes(row) for row in rgb_rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def shape_image(size, colour, shape, rng):
    cx, cy, r = rng.uniform(0.35, 0.65) * size, rng.uniform(0.35, 0.65) * size, rng.uniform(0.2, 0.3) * size
    rows = []
    for y in range(size):
        row = []
        for x in range(size):
            inside = ((x - cx) ** 2 + (y - cy) ** 2 <= r * r) if shape == "circle" else (abs(x - cx) <= r and abs(y - cy) <= r)
            row.extend(COLOURS[colour] if inside else (255, 255, 255))
        rows.append(row)
    return png(size, size, rows)


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--per-shard", type=int, default=16)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bad", action="store_true")
    a = p.parse_args()
    rng = random.Random(a.seed)
    for s in range(a.shards):
        with tarfile.open(f"{a.out}/shard-{s:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(a.per_shard):
                colour, shape = rng.choice(sorted(COLOURS)), rng.choice(["circle", "square"])
                key = f"s{s:02d}_{i:04d}"
                add(tar, key + ".png", shape_image(a.size, colour, shape, rng))
                add(tar, key + ".txt", f"a {colour} {shape}".encode())
            if a.bad and s == a.shards - 1:
                good = shape_image(a.size, "red", "circle", rng)
                add(tar, "bad_truncated.png", good[: len(good) // 2]); add(tar, "bad_truncated.txt", b"cut")
                add(tar, "bad_text.png", b"this is not an image"); add(tar, "bad_text.txt", b"text")
                add(tar, "bad_empty.png", b""); add(tar, "bad_empty.txt", b"empty")
                add(tar, "bad_nocaption.png", good)
                add(tar, "bad_utf8.png", good); add(tar, "bad_utf8.txt", b"caf\xe9")
                add(tar, f"s{s:02d}_0000.png", good); add(tar, f"s{s:02d}_0000.txt", b"duplicate")


if __name__ == "__main__":
    main()
