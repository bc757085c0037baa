#!/usr/bin/python3
"""build_text.py - the text corpus of fetch-text.sh from its unpacked Debian
packages (--root): one file per part and split, documents separated by blank
lines, the last 3% of each part's documents held out.

  build_text.py check --root R --out DIR --script-hash H   exit 0 when DIR is complete for H
  build_text.py build --root R --out DIR --script-hash H   (re)build DIR

The output is written into DIR.tmp and renamed over DIR, manifest.json last,
so a folder with a manifest is complete.
"""
import argparse, gzip, hashlib, json, os, re, shutil, subprocess, sys

HELD_OUT = 0.03
BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def clean(doc):
    """One document: no blank line inside it, no trailing spaces."""
    lines = [l.rstrip() for l in doc.replace("\r", "").split("\n")]
    return "\n".join(l for l in lines if l.strip())


def paragraphs(text):
    return [clean(p) for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


def bible(root):
    out = subprocess.run([f"{root}/usr/bin/bible", "-p", f"{root}/usr/lib", "-f", "Gen1:1-Rev22:21"],
                         env={"PATH": "/usr/bin:/bin"}, capture_output=True, check=True).stdout.decode("utf-8")
    docs, key = [], None
    for line in out.splitlines():
        m = re.match(r"^(\S+?)(\d+):\d+ (.*)$", line)
        if not m:
            continue
        if (m.group(1), m.group(2)) != key:
            key = (m.group(1), m.group(2))
            docs.append([])
        docs[-1].append(m.group(3).strip())
    return [" ".join(d) for d in docs]


def austen(root):
    r = ('suppressMessages(library(janeaustenr, lib.loc="%s/usr/lib/R/site-library"));'
         'b <- austen_books(); for (k in levels(b$book)) { writeLines(as.character(b$text[b$book == k])); writeLines(c("", "")) }'
         % root)
    text = subprocess.run(["Rscript", "-e", r], capture_output=True, check=True).stdout.decode("utf-8")
    return paragraphs(text)


def wordnet(root):
    docs = []
    for pos in ("noun", "verb", "adj", "adv"):
        with open(f"{root}/usr/share/wordnet/data.{pos}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:
                    continue   # the licence header
                fields, gloss = line.split(" | ", 1)
                parts = fields.split()
                words = [parts[4 + 2 * i].replace("_", " ") for i in range(int(parts[3], 16))]
                docs.append(f"{', '.join(words)}: {gloss.strip()}")
    return docs


def read_text(path):
    data = open(path, "rb").read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def fortunes(root):
    d = f"{root}/usr/share/games/fortunes"
    docs = []
    for name in sorted(os.listdir(d)):
        p = f"{d}/{name}"
        if "." in name or not os.path.isfile(p):
            continue   # .dat indexes and .u8 links
        docs += [clean(x) for x in re.split(r"^%$", read_text(p), flags=re.M) if x.strip()]
    return docs


def jargon(root):
    with gzip.open(f"{root}/usr/share/doc/jargon-text/jargon.txt.gz") as f:
        return paragraphs(f.read().decode("utf-8", errors="replace"))


def b64(s):
    v = 0
    for c in s:
        v = v * 64 + BASE64.index(c)
    return v


def devil(root):
    with gzip.open(f"{root}/usr/share/dictd/devil.dict.dz") as f:   # dictzip is gzip
        body = f.read()
    docs = []
    with open(f"{root}/usr/share/dictd/devil.index", encoding="utf-8") as f:
        for line in f:
            word, off, n = line.rstrip("\n").split("\t")
            if word.startswith("00database"):
                continue
            docs.append(clean(body[b64(off):b64(off) + b64(n)].decode("utf-8", errors="replace")))
    return docs


PARTS = [
    ("bible", bible, ["bible-kjv", "bible-kjv-text"], "public domain (King James Version)"),
    ("austen", austen, ["r-cran-janeaustenr"], "public domain (the novels); the R package is MIT"),
    ("wordnet", wordnet, ["wordnet-base"], "WordNet 3.0 licence (Princeton University), see licenses/wordnet-base"),
    ("fortunes", fortunes, ["fortunes", "fortunes-min"], "BSD (the fortune collections of BSD games)"),
    ("jargon", jargon, ["jargon-text"], "public domain (The Jargon File 4.4.7)"),
    ("devil", devil, ["dict-devil"], "public domain (Ambrose Bierce, The Devil's Dictionary)"),
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def check(a):
    try:
        m = json.load(open(f"{a.out}/manifest.json"))
        if m["script_hash"] != a.script_hash:
            return False
        return all(sha256(f"{a.out}/{f}") == h for f, h in m["files"].items())
    except (OSError, ValueError, KeyError):
        return False


def build(a):
    tmp = a.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(f"{tmp}/train")
    os.makedirs(f"{tmp}/heldout")
    os.makedirs(f"{tmp}/licenses")
    manifest = {"script_hash": a.script_hash, "held_out": HELD_OUT, "parts": {}, "files": {}}
    lic = ["# Licences of the text corpus\n"]
    for name, reader, packages, licence in PARTS:
        docs = [d for d in reader(a.root) if d.strip()]
        cut = len(docs) - max(1, round(len(docs) * HELD_OUT))
        counts = {}
        for split, part in (("train", docs[:cut]), ("heldout", docs[cut:])):
            path = f"{split}/{name}.txt"
            with open(f"{tmp}/{path}", "w", encoding="utf-8") as f:
                f.write("\n\n".join(part) + "\n")
            counts[split] = {"docs": len(part), "words": sum(len(d.split()) for d in part)}
            manifest["files"][path] = sha256(f"{tmp}/{path}")
        manifest["parts"][name] = {"packages": packages, "licence": licence, **counts}
        for p in packages:
            shutil.copy(f"{a.root}/usr/share/doc/{p}/copyright", f"{tmp}/licenses/{p}")
        lic.append(f"- **{name}** ({', '.join(packages)}): {licence}. Copyright file: "
                   + ", ".join(f"`licenses/{p}`" for p in packages) + "\n")
        print(f"build-text: {name}: {counts['train']['docs']} + {counts['heldout']['docs']} held-out documents, "
              f"{counts['train']['words'] + counts['heldout']['words']} words")
    with open(f"{tmp}/LICENSES.md", "w") as f:
        f.writelines(lic)
    with open(f"{tmp}/manifest.json", "w") as f:
        json.dump(manifest, f, indent=1)
    shutil.rmtree(a.out, ignore_errors=True)
    os.rename(tmp, a.out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["check", "build"])
    p.add_argument("--root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--script-hash", required=True)
    a = p.parse_args()
    if a.what == "check":
        sys.exit(0 if check(a) else 1)
    build(a)


if __name__ == "__main__":
    main()
