#!/usr/bin/python3
"""Builds the image-caption WebDataset shards from the unpacked sources.

Called by data/fetch-images.sh (which installs the tools and fetches the npm
packages into CACHE/src); standard library only.

  build_images.py [options] check   exit 0 when OUT is complete for these options
  build_images.py [options] build   plan, rasterize, write the shards

Steps of `build`:
  plan    one sample per image: key, caption, metadata, concept, split
          (test/ood: the held-out concepts; val: 3% of the others, by a fixed
          hash of the key; train: the rest)
  render  bin/render_images (data/render_images.c: librsvg + libwebp in
          process, one thread per core), in chunks of RENDER_CHUNK images;
          inputs that fail are skipped and counted
  pack    {train,val,test,ood}-NNNNN.tar, each member set KEY.webp, KEY.txt,
          KEY.json; every shard is written under a hidden temporary name and
          renamed when complete; manifest.json is written last
"""

import argparse
import fcntl
import hashlib
import io
import json
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import unicodedata
import xml.etree.ElementTree as ET

FORMAT_VERSION = 2      # 2: the val split
SHARD_SAMPLES = 1000
MAX_KEY = 90            # keys + ".webp" fit a plain ustar name (100 bytes)
MAX_TAGS = 5
TUXPAINT_ROOT = "/usr/share/tuxpaint/stamps"   # --tuxpaint-root changes it (tests)
TUXPAINT_VERSION_PINNED = "2022.06.04-1"

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"

# Skin-tone modifiers: code point -> the words CLDR uses.
TONES = {
    "1F3FB": "light",
    "1F3FC": "medium-light",
    "1F3FD": "medium",
    "1F3FE": "medium-dark",
    "1F3FF": "dark",
}
FLUENT_TONES = ["default", "light", "medium-light", "medium", "medium-dark", "dark"]

# Fluent names whose slug differs from the CLDR annotation in openmoji.json
# beyond case, punctuation, accents and hyphens (those are handled generally).
FLUENT_ALIASES = {
    "hugging-face": "smiling face with open hands",
    "keycap-asterisk": "keycap: *",
    "keycap-hashtag": "keycap: #",
    "knocked-out-face": "face with crossed-out eyes",
    "pouting-face": "enraged face",
    "red-triangle": "red triangle pointed up",
    "phoenix-bird": "phoenix",
    "stuffedbread": "stuffed flatbread",
    "stuffedbread-flat": "stuffed flatbread",
    "person-blonde-hair": "person: blond hair",
    "man-blonde-hair": "man: blond hair",
    "woman-blonde-hair": "woman: blond hair",
    "person-deaf": "deaf person",
    "man-deaf": "deaf man",
    "woman-deaf": "deaf woman",
    "person-merpeople": "merperson",
    "man-merpeople": "merman",
    "woman-merpeople": "mermaid",
    "person-with-bunny-ears": "people with bunny ears",
    "man-with-bunny-ears": "men with bunny ears",
    "woman-with-bunny-ears": "women with bunny ears",
    "person-wrestling": "people wrestling",
    "man-wrestling": "men wrestling",
    "woman-wrestling": "women wrestling",
    "person-elf": "elf",
    "person-fairy": "fairy",
    "person-genie": "genie",
    "person-mage": "mage",
    "person-superhero": "superhero",
    "person-supervillain": "supervillain",
    "person-vampire": "vampire",
    "person-zombie": "zombie",
}

SOURCES = {
    "openmoji": {
        "package": "openmoji@17.0.0", "dir": "openmoji-17.0.0",
        "style": "openmoji emoji", "license": "CC BY-SA 4.0",
    },
    "twemoji": {
        "package": "@twemoji/svg@15.0.0", "dir": "twemoji-svg-15.0.0",
        "style": "twemoji emoji", "license": "CC BY 4.0",
    },
    "noto": {
        "package": "@svgmoji/noto@3.2.0", "dir": "svgmoji-noto-3.2.0",
        "style": "noto emoji", "license": "Apache-2.0",
    },
    "fluent-flat": {
        "package": "fluentui-emoji@1.3.0", "dir": "fluentui-emoji-1.3.0",
        "style": "fluent flat emoji", "license": "MIT",
    },
    "fluent-modern": {
        "package": "fluentui-emoji@1.3.0", "dir": "fluentui-emoji-1.3.0",
        "style": "fluent modern emoji", "license": "MIT",
    },
    "tuxpaint": {
        "package": "Debian tuxpaint-stamps-default", "dir": None,
        "style": "tux paint stamp", "license": "GPL-2+",
    },
}
SOURCE_ORDER = list(SOURCES)
SPLITS = ("train", "val", "test", "ood")
# val: this many of every 10000 non-held-out samples, chosen by in_val().
VAL_PER_10000 = 300
VAL_SALT = b"transfusion-val-v1:"
RENDER_CHUNK = 1000     # images per renderer process: progress lines, crash isolation
HERE = os.path.dirname(os.path.abspath(__file__))


def log(msg):
    print(msg, flush=True)


class BadInput(Exception):
    pass


# ---------------------------------------------------------------- hex codes

def hex_parts(h):
    return [p.upper().zfill(4) for p in re.split(r"[-_ ]", h.strip()) if p]


def norm_hex(h):
    """Upper case, zero-padded, FE0F removed: the join key between sources."""
    return "-".join(p for p in hex_parts(h) if p != "FE0F")


def concept_hex(h):
    """The concept: base hex code without FE0F and skin-tone modifiers."""
    return "-".join(p for p in hex_parts(h) if p != "FE0F" and p not in TONES)


def slug(s):
    s = unicodedata.normalize("NFKD", s)
    s = "".join(c for c in s if not unicodedata.combining(c))
    s = s.lower().replace("\u2019", "").replace("'", "")
    return re.sub(r"[^a-z0-9]+", "-", s).strip("-")


def safe_key(s):
    s = re.sub(r"[^A-Za-z0-9_-]+", "-", s).strip("-")
    if len(s) > MAX_KEY:
        s = s[:MAX_KEY - 9] + "-" + hashlib.sha256(s.encode()).hexdigest()[:8]
    return s


# ---------------------------------------------------------------- SVG inputs

UNITS = {"": 1.0, "px": 1.0, "pt": 4 / 3, "pc": 16.0, "mm": 96 / 25.4,
         "cm": 96 / 2.54, "in": 96.0}
ROOT_RE = re.compile(rb"<svg\b[^>]*>", re.S)


def _attr(tag, name):
    m = re.search(rb"(?<![\w:-])" + name + rb"\s*=\s*(\"[^\"]*\"|'[^']*')", tag)
    return m.group(1)[1:-1].decode("utf-8", "replace").strip() if m else None


def _length(v):
    if v is None:
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-z]*)", v)
    if not m or m.group(2) not in UNITS:
        return None
    return float(m.group(1)) * UNITS[m.group(2)]


def square_svg(data):
    """None when the SVG's intrinsic size is square (rsvg-convert -a then fills
    S x S); else the SVG with a square intrinsic size that centres the drawing
    (viewBox kept, preserveAspectRatio xMidYMid meet), rendered directly."""
    m = ROOT_RE.search(data)
    if not m:
        raise BadInput("no <svg> root element")
    tag = m.group(0)
    w, h = _length(_attr(tag, rb"width")), _length(_attr(tag, rb"height"))
    vb = _attr(tag, rb"viewBox")
    vbn = None
    if vb:
        try:
            vbn = [float(x) for x in re.split(r"[\s,]+", vb.strip())]
        except ValueError:
            vbn = None
        if vbn is not None and (len(vbn) != 4 or vbn[2] <= 0 or vbn[3] <= 0):
            vbn = None
    if w is None or h is None:
        if vbn is None:
            raise BadInput("SVG has neither a usable width/height nor a viewBox")
        if w is None and h is None:
            w, h = vbn[2], vbn[3]
        elif w is None:
            w = h * vbn[2] / vbn[3]
        else:
            h = w * vbn[3] / vbn[2]
    if w <= 0 or h <= 0:
        raise BadInput("SVG has a zero size")
    if abs(w - h) <= 1e-6 * max(w, h):
        return None
    side = max(w, h)
    body = re.sub(rb"\s(?:width|height|preserveAspectRatio)\s*=\s*(\"[^\"]*\"|'[^']*')", b"", tag[4:])
    new = b'<svg width="%s" height="%s" preserveAspectRatio="xMidYMid meet"' % (
        repr(side).encode(), repr(side).encode())
    if vbn is None:
        new += b' viewBox="0 0 %s %s"' % (repr(w).encode(), repr(h).encode())
    return data[:m.start()] + new + body + data[m.end():]


def png_size(data):
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise BadInput("not a PNG file")
    w, h = struct.unpack(">II", data[16:24])
    if w == 0 or h == 0:
        raise BadInput("PNG has a zero size")
    return w, h


def webp_size(data):
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


# ---------------------------------------------------------------- metadata

class OpenMoji:
    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            self.entries = json.load(f)
        self.by_hex = {}
        self.by_slug = {}
        self.by_annotation = {}
        for e in self.entries:
            self.by_hex.setdefault(norm_hex(e["hexcode"]), e)
        # Unicode emoji win over OpenMoji's private-use extras of the same name.
        for e in sorted(self.entries, key=lambda e: e["group"].startswith("extras")):
            if e["subgroups"] == "brand":
                continue
            self.by_annotation.setdefault(e["annotation"], e)
            if not e["skintone"]:
                self.by_slug.setdefault(slug(e["annotation"]), e)
                self.by_slug.setdefault(slug(e["annotation"]).replace("-", ""), e)

    def base(self, e):
        if e.get("skintone_base_hexcode"):
            return self.by_hex.get(norm_hex(e["skintone_base_hexcode"]), e)
        return e

    def tags(self, e, label):
        """CLDR keywords then OpenMoji's own tags (the base emoji's for skin
        tones), without those the label already says, at most MAX_TAGS."""
        b = self.base(e)
        label_words = set(re.findall(r"\w+", label.lower()))
        out, seen = [], set()
        for field in ("tags", "openmoji_tags"):
            raw = e.get(field) or b.get(field) or ""
            for t in raw.split(","):
                t = " ".join(t.split())
                if not t or t.lower() in seen:
                    continue
                words = set(re.findall(r"\w+", t.lower()))
                if words and words <= label_words:
                    continue
                seen.add(t.lower())
                out.append(t)
        return out[:MAX_TAGS]


def emoji_caption(label, style, tags):
    cap = label.rstrip(".") + ". style: " + style + "."
    if tags:
        cap += " tags: " + ", ".join(tags) + "."
    return cap


def skin_tone(h):
    """"medium", or "light, dark" for a sequence of two people, or None."""
    tones = [TONES[p] for p in hex_parts(h) if p in TONES]
    return ", ".join(dict.fromkeys(tones)) or None


def emoji_meta(om, e, label, hexcode=None):
    hexcode = hexcode or e["hexcode"]
    return {
        "label": label,
        "hexcode": hexcode,
        "group": e["group"] or None,
        "subgroup": e["subgroups"] or None,
        "tags": om.tags(e, label),
        "skin_tone": skin_tone(hexcode),
    }


# ---------------------------------------------------------------- planning

class Planner:
    def __init__(self, args):
        self.args = args
        self.src = os.path.join(args.cache, "src")
        self.samples = []
        self.skipped = {s: {} for s in SOURCE_ORDER}
        self.notes = {s: [] for s in SOURCE_ORDER}

    def skip(self, source, reason, n=1):
        self.skipped[source][reason] = self.skipped[source].get(reason, 0) + n

    def add(self, source, ident, concept, input_kind, input_path, caption, meta, extra_keys=()):
        self.samples.append({
            "key": safe_key(source + "_" + ident), "source": source,
            "concept": concept, "alt_concepts": list(extra_keys),
            "input_kind": input_kind, "input": input_path,
            "caption": caption, "meta": meta,
        })

    def limited(self, items):
        return items[: self.args.limit] if self.args.limit > 0 else items

    def pkg(self, source):
        return os.path.join(self.src, SOURCES[source]["dir"], "package")

    def openmoji(self, om):
        entries = sorted(om.entries, key=lambda e: norm_hex(e["hexcode"]))
        kept = []
        for e in entries:
            if e["subgroups"] == "brand":
                self.skip("openmoji", "brand logo dropped")
                continue
            kept.append(e)
        for e in self.limited(kept):
            path = os.path.join(self.pkg("openmoji"), "color", "svg", e["hexcode"] + ".svg")
            if not os.path.isfile(path):
                self.skip("openmoji", "SVG missing")
                continue
            label = e["annotation"]
            meta = emoji_meta(om, e, label)
            self.add("openmoji", norm_hex(e["hexcode"]), concept_hex(e["hexcode"]), "svg", path,
                     emoji_caption(label, SOURCES["openmoji"]["style"], meta["tags"]), meta)

    def joined(self, om, source, h):
        """openmoji entry and label for a hex code of another source, or None."""
        e = om.by_hex.get(norm_hex(h))
        if e is not None:
            return e, e["annotation"]
        # A skin-tone variant openmoji lacks, of an emoji it has: base + tone.
        parts = [p for p in hex_parts(h) if p != "FE0F"]
        tones = [p for p in parts if p in TONES]
        b = om.by_hex.get(concept_hex(h))
        if b is not None and len(tones) == 1:
            return b, b["annotation"] + ": " + TONES[tones[0]] + " skin tone"
        return None

    def twemoji(self, om):
        d = self.pkg("twemoji")
        names = sorted(f[:-4] for f in os.listdir(d) if f.endswith(".svg"))
        for n in self.limited(names):
            j = self.joined(om, "twemoji", n)
            if j is None:
                self.skip("twemoji", "hex code not in openmoji.json")
                continue
            e, label = j
            meta = emoji_meta(om, e, label, "-".join(hex_parts(n)))
            self.add("twemoji", norm_hex(n), concept_hex(n), "svg", os.path.join(d, n + ".svg"),
                     emoji_caption(label, SOURCES["twemoji"]["style"], meta["tags"]), meta)

    def noto_split(self):
        """Splits the sprite into one SVG per emoji, once, into CACHE/src."""
        out = os.path.join(self.src, "noto-split")
        sprite = os.path.join(self.pkg("noto"), "sprites", "all.svg")
        stamp = os.path.join(out, ".complete")
        want = hashlib.sha256(open(sprite, "rb").read()).hexdigest() + " v1"
        if os.path.isfile(stamp) and open(stamp).read() == want:
            return out
        tmp = out + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(tmp)
        ET.register_namespace("", SVG_NS)
        ET.register_namespace("xlink", XLINK_NS)
        root = ET.parse(sprite).getroot()
        n = 0
        for child in root:
            if child.tag != "{%s}svg" % SVG_NS or not child.get("id"):
                continue
            ident = child.get("id")
            if not re.fullmatch(r"[0-9A-Fa-f]+(-[0-9A-Fa-f]+)*", ident):
                continue
            child.tail = None
            with open(os.path.join(tmp, ident + ".svg"), "wb") as f:
                f.write(ET.tostring(child, encoding="utf-8", xml_declaration=True))
            n += 1
        with open(os.path.join(tmp, ".complete"), "w") as f:
            f.write(want)
        os.replace(tmp, out)
        log(f"plan: split the Noto sprite into {n} SVGs")
        return out

    def noto(self, om):
        d = self.noto_split()
        names = sorted(f[:-4] for f in os.listdir(d) if f.endswith(".svg"))
        for n in self.limited(names):
            j = self.joined(om, "noto", n)
            if j is None:
                self.skip("noto", "hex code not in openmoji.json")
                continue
            e, label = j
            meta = emoji_meta(om, e, label, "-".join(hex_parts(n)))
            self.add("noto", norm_hex(n), concept_hex(n), "svg", os.path.join(d, n + ".svg"),
                     emoji_caption(label, SOURCES["noto"]["style"], meta["tags"]), meta)

    def fluent(self, om, held):
        for variant in ("flat", "modern"):
            source = "fluent-" + variant
            d = os.path.join(self.pkg(source), "icons", variant)
            names = sorted(f[:-4] for f in os.listdir(d) if f.endswith(".svg"))
            present = set(names)
            for n in self.limited(names):
                base, tone = n, None
                for t in sorted(FLUENT_TONES, key=len, reverse=True):
                    if n.endswith("-" + t) and n[: -len(t) - 1] + "-default" in present:
                        base, tone = n[: -len(t) - 1], t
                        break
                e = None
                if base in FLUENT_ALIASES:
                    e = om.by_annotation.get(FLUENT_ALIASES[base])
                if e is None:
                    e = om.by_slug.get(base) or om.by_slug.get(base.replace("-", ""))
                fluent_id = "fluent:" + base
                if e is not None:
                    label = e["annotation"]
                    entry = e
                    if tone and tone != "default":
                        # CLDR: "x: dark skin tone", "x: dark skin tone, red hair"
                        names = [label + ": " + tone + " skin tone"]
                        if ": " in label:
                            head, tail = label.split(": ", 1)
                            names.insert(0, head + ": " + tone + " skin tone, " + tail)
                        v = next((om.by_annotation[x] for x in names if x in om.by_annotation), None)
                        if v is not None:
                            entry, label = v, v["annotation"]
                        else:
                            label = names[-1]
                    meta = emoji_meta(om, entry, label)
                    if entry is e and tone and tone != "default":
                        meta["hexcode"] = None
                        meta["skin_tone"] = tone
                    hexc = concept_hex(e["hexcode"])
                    # The held-out list names some Fluent emoji by slug: keep
                    # that concept id; its hex twin is held out with it.
                    concept = fluent_id if fluent_id in held else hexc
                    extra = [hexc] if concept != hexc else []
                else:
                    label = base.replace("-", " ")
                    if tone and tone != "default":
                        label += ": " + tone + " skin tone"
                    meta = {"label": label, "hexcode": None, "group": None, "subgroup": None,
                            "tags": [], "skin_tone": tone if tone != "default" else None}
                    concept, extra = fluent_id, []
                    self.notes[source].append(base)
                meta["fluent_name"] = n
                self.add(source, n, concept, "svg", os.path.join(d, n + ".svg"),
                         emoji_caption(label, SOURCES[source]["style"], meta["tags"]), meta, extra)

    def tuxpaint(self):
        root = self.args.tuxpaint_root
        stamps = []
        for dp, dns, fns in os.walk(root):
            dns.sort()
            for fn in sorted(fns):
                if fn.endswith(".txt"):
                    stamps.append(os.path.relpath(os.path.join(dp, fn[:-4]), root))
        stamps.sort()
        for rel in self.limited(stamps):
            p = os.path.join(root, rel)
            if os.path.isfile(p + ".svg"):
                kind, path = "svg", p + ".svg"      # Tux Paint prefers the SVG
            elif os.path.isfile(p + ".png"):
                kind, path = "png", p + ".png"
            else:
                self.skip("tuxpaint", "no image beside the .txt")
                continue
            with open(p + ".txt", "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            sentence = next((ln.strip() for ln in lines if ln.strip()), "")
            if not sentence or "=" in sentence.split(" ")[0]:
                self.skip("tuxpaint", "no English sentence")
                continue
            sentence = " ".join(sentence.split())
            if sentence[-1] not in ".!?":
                sentence += "."
            meta = {"label": sentence, "hexcode": None, "group": rel.split("/")[0],
                    "subgroup": os.path.dirname(rel), "tags": [], "skin_tone": None,
                    "stamp": rel, "image_format": kind}
            self.add("tuxpaint", rel.replace("/", "__"), "tuxpaint:" + rel, kind, path,
                     sentence + " style: tux paint stamp.", meta)

    def plan(self, held):
        om = OpenMoji(os.path.join(self.pkg("openmoji"), "data", "openmoji.json"))
        steps = [("openmoji", lambda: self.openmoji(om)), ("twemoji", lambda: self.twemoji(om)),
                 ("noto", lambda: self.noto(om)), ("fluent", lambda: self.fluent(om, held)),
                 ("tuxpaint", self.tuxpaint)]
        for name, fn in steps:
            before = len(self.samples)
            fn()
            log(f"plan: {name}: {len(self.samples) - before} images")
        keys = {}
        for s in self.samples:
            k = s["key"]
            if k in keys:
                i = 2
                while f"{k}-{i}" in keys:
                    i += 1
                s["key"] = f"{k}-{i}"
            keys[s["key"]] = s
        return self.samples


# ---------------------------------------------------------------- held out

def read_heldout(path):
    held = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split("\t")
            if len(parts) != 2 or parts[0] not in ("test", "ood"):
                sys.exit(f"build_images: {path}:{n}: expected 'test|ood<TAB>concept', got {line!r}")
            held[parts[1]] = parts[0]
    return held


def in_val(key):
    """Whether a sample that is not held out goes to val rather than train.

    A fixed hash of the key alone (salted, so it is independent of the shard
    order, which hashes the bare key): the same answer on every machine, in
    every run and with any --limit, whatever order the sources are listed in.
    About VAL_PER_10000 / 10000 of the keys. The val images are renderings the
    model never trains on, mostly of concepts it sees in other styles (a Tux
    Paint stamp, or an emoji only one source draws, has no other style: its
    val sample is a concept train lacks; the manifest counts them)."""
    h = hashlib.sha256(VAL_SALT + key.encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") % 10000 < VAL_PER_10000


def assign_splits(samples, held):
    linked = {}
    for s in samples:
        if s["concept"] in held:
            for c in s["alt_concepts"]:
                if c not in held:
                    linked[c] = held[s["concept"]]
    for s in samples:
        c = s["concept"]
        s["split"] = held.get(c) or linked.get(c) or ("val" if in_val(s["key"]) else "train")
    found = sorted({s["concept"] for s in samples if s["concept"] in held})
    missing = sorted(c for c in held if c not in set(found))
    return found, missing, linked


# ---------------------------------------------------------------- rendering

def prepare_input(s, prep_dir):
    """Path of the file to rasterize for a sample: the original, or for a
    non-square SVG a prepared copy on a square canvas (so the drawing is
    centred exactly as before render_images existed). PNG stamps go as they
    are: render_images wraps them in the same square SVG itself."""
    if s["input_kind"] == "png":
        with open(s["input"], "rb") as f:
            png_size(f.read(24))            # BadInput when not a PNG
        return s["input"]
    dst = os.path.join(prep_dir, s["key"] + ".svg")
    if os.path.isfile(dst):
        return dst
    with open(s["input"], "rb") as f:
        data = f.read()
    new = square_svg(data)
    if new is None:
        return s["input"]
    tmp = dst + ".tmp"
    with open(tmp, "wb") as f:
        f.write(new)
    os.replace(tmp, dst)
    return dst


def run_renderer(renderer, chunk, size, jobs, cpu_seconds):
    """Runs render_images over [(sample, input path)]; returns its exit status,
    {output path: reason} of the failures it reported, and its stderr."""
    def limit():
        # Bounds an SVG that makes librsvg spin (the old worker's ulimit -t).
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = cpu_seconds if hard == resource.RLIM_INFINITY else min(cpu_seconds, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    inp = "".join(f"{p}\t{s['webp']}\t{size}\n" for s, p in chunk)
    r = subprocess.run([renderer, "--threads", str(jobs)], input=inp.encode("utf-8"),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit, check=False)
    if r.returncode == 2:
        sys.exit(f"build_images: {renderer} refused its jobs: "
                 + r.stderr.decode("utf-8", "replace").strip())
    fails = {}
    for line in r.stdout.decode("utf-8", "replace").splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[0] == "fail":
            fails[parts[1]] = parts[2]
    return r.returncode, fails, r.stderr.decode("utf-8", "replace")


def died(rc, err):
    why = f"signal {-rc}" if rc < 0 else f"exit status {rc}"
    tail = " ".join(err.split())[-200:]
    return f"render_images died ({why})" + (f": {tail}" if tail else "")


def render(samples, work, size, jobs, renderer):
    prep_dir = os.path.join(work, "prep")
    webp_dir = os.path.join(work, "webp")
    os.makedirs(prep_dir, exist_ok=True)
    os.makedirs(webp_dir, exist_ok=True)
    for d in (prep_dir, webp_dir):          # leftovers of an interrupted run
        for f in os.listdir(d):
            if f.endswith(".tmp"):
                os.remove(os.path.join(d, f))
    failed = {}
    todo = []
    total = {src: 0 for src in SOURCE_ORDER}
    done = {src: 0 for src in SOURCE_ORDER}
    for s in samples:
        total[s["source"]] += 1
        s["webp"] = os.path.join(webp_dir, s["key"] + ".webp")
        if os.path.isfile(s["webp"]):
            done[s["source"]] += 1
            continue
        try:
            p = prepare_input(s, prep_dir)
        except (BadInput, OSError) as e:
            failed[s["key"]] = f"bad input: {e}"
            continue
        if "\t" in p or "\n" in p:        # the renderer's job lines are tab-separated
            failed[s["key"]] = "input path has a tab or newline"
            continue
        todo.append((s, p))
    cached = sum(done.values())
    log(f"render: {len(todo)} images to rasterize at {size}x{size} with {jobs} threads"
        + (f" ({cached} already done by an earlier run)" if cached else ""))
    if not todo:
        return failed
    if not os.access(renderer, os.X_OK):
        sys.exit(f"build_images: renderer {renderer} missing (make bin/render_images)")
    t0 = time.time()
    last, last_n = 0.0, -1

    def progress(final=False):
        nonlocal last, last_n
        now = time.time()
        n = sum(done.values()) + len(failed)
        if (not final and now - last < 5) or n == last_n:
            return
        last, last_n = now, n
        n = sum(done.values())
        per = ", ".join(f"{k} {done[k]}/{total[k]}" for k in SOURCE_ORDER if total[k])
        log(f"render: {n}/{len(samples)} [{per}] {len(failed)} failed, {now - t0:.0f} s")

    def settle(chunk, fails):
        """Records each job of a finished run; returns those with no result."""
        lost = []
        for s, p in chunk:
            if s["webp"] in fails:
                failed[s["key"]] = fails[s["webp"]]
            elif os.path.isfile(s["webp"]):
                done[s["source"]] += 1
            else:
                lost.append((s, p))
        return lost

    # CPU budget of one run: far above what the images need (a few ms each at
    # 64 px), low enough that a spinning SVG does not hold the build for long.
    per_image = 0.25 * max(1.0, (size / 64) ** 2)
    for i in range(0, len(todo), RENDER_CHUNK):
        chunk = todo[i:i + RENDER_CHUNK]
        rc, fails, err = run_renderer(renderer, chunk, size, jobs, int(120 + per_image * len(chunk)))
        lost = settle(chunk, fails)
        if lost:
            # The renderer crashed or hit its CPU limit: render what it left
            # one image per process, so only the culprit fails.
            log(f"render: {died(rc, err)}; retrying its {len(lost)} unfinished images one by one")
            for job in lost:
                rc1, fails1, err1 = run_renderer(renderer, [job], size, 1, int(120 + per_image))
                for s, _ in settle([job], fails1):
                    failed[s["key"]] = died(rc1, err1)
        progress()
    progress(final=True)
    return failed


# ---------------------------------------------------------------- packing

def order_key(s):
    # Deterministic and source-mixed: shards hold a mix of styles.
    return hashlib.sha256(s["key"].encode()).hexdigest()


def add_member(tar, name, data):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = 0
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    tar.addfile(ti, io.BytesIO(data))


def write_shard(path, samples):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".partial")
    with open(tmp, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for s in samples:
                add_member(tar, s["key"] + ".webp", s["webp_bytes"])
                add_member(tar, s["key"] + ".txt", s["caption"].encode("utf-8"))
                add_member(tar, s["key"] + ".json", json.dumps(
                    s["json"], ensure_ascii=False, sort_keys=True).encode("utf-8"))
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return os.path.getsize(path), h.hexdigest()


def sample_json(s):
    m = s["meta"]
    j = {
        "key": s["key"], "concept": s["concept"], "source": s["source"],
        "style": SOURCES[s["source"]]["style"], "split": s["split"],
        "license": SOURCES[s["source"]]["license"],
        "label": m["label"], "hexcode": m.get("hexcode"), "group": m.get("group"),
        "subgroup": m.get("subgroup"), "tags": m.get("tags", []), "skin_tone": m.get("skin_tone"),
    }
    for k in ("fluent_name", "stamp", "image_format"):
        if k in m:
            j[k] = m[k]
    return j


# ---------------------------------------------------------------- licences

LICENSES_MD = """# Licences of the image-caption data

Every image in these shards is a rasterized copy of artwork from one of the
sources below; the licence of each image is the licence of its source (also in
each sample's KEY.json, field `license`). The captions are made from the
sources' own names, keywords and sentences. Redistributing the shards means
honouring all of these licences; the OpenMoji images are under a ShareAlike
licence, the Tux Paint stamps under the GPL.

| source (`source` field) | package | art licence | attribution |
|---|---|---|---|
| OpenMoji (`openmoji`) | npm `openmoji@17.0.0` | CC BY-SA 4.0 | All emojis designed by OpenMoji – the open-source emoji and icon project (https://openmoji.org/). License: CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/). |
| Twemoji (`twemoji`) | npm `@twemoji/svg@15.0.0` (packaging MIT, Copyright (c) 2023 Samuel Kopp) | CC BY 4.0 | Twemoji graphics Copyright Twitter, Inc and other contributors (the twemoji project, continued by jdecked/twemoji), licensed under CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/). |
| Noto Emoji (`noto`) | npm `@svgmoji/noto@3.2.0` (packaging MIT, Copyright (c) 2020 KickJump Ltd) | Apache-2.0 | Noto Emoji Copyright Google Inc., licensed under the Apache License, Version 2.0 (https://www.apache.org/licenses/LICENSE-2.0); the flag images are in the public domain. |
| Fluent Emoji (`fluent-flat`, `fluent-modern`) | npm `fluentui-emoji@1.3.0` (packaging MIT, Copyright (c) 2022 Mohammad Abu Mattar) | MIT | Fluent Emoji Copyright (c) Microsoft Corporation, licensed under the MIT License. |
| Tux Paint stamps (`tuxpaint`) | Debian `tuxpaint-stamps-default` {tux_version} | GPL-2+ | Tux Paint stamps Copyright 2002-2022 Bill Kendrick <bill@newbreedsoftware.com> and the Tux Paint contributors; GNU General Public License version 2 or later (https://www.gnu.org/licenses/old-licenses/gpl-2.0.html). |

Changes made: SVGs rasterized to {size}x{size} pixels on a white background
(non-square art centred), stored as lossless WebP; PNG stamps scaled to fit
{size}x{size} and centred on white; the Noto sprite split into single images;
OpenMoji's 53 brand logos left out.

The licence texts shipped with the packages are in `licenses/`.
"""


def write_licenses(out, args, tux_version):
    with open(os.path.join(out, ".LICENSES.md.tmp"), "w", encoding="utf-8") as f:
        f.write(LICENSES_MD.format(size=args.size, tux_version=tux_version or "(version unknown)"))
    os.replace(os.path.join(out, ".LICENSES.md.tmp"), os.path.join(out, "LICENSES.md"))
    ld = os.path.join(out, "licenses")
    os.makedirs(ld, exist_ok=True)
    src = os.path.join(args.cache, "src")
    files = {
        "openmoji-CC-BY-SA-4.0.txt": os.path.join(src, "openmoji-17.0.0", "package", "LICENSE.txt"),
        "twemoji-svg-package-MIT.txt": os.path.join(src, "twemoji-svg-15.0.0", "package", "license"),
        "svgmoji-noto-package-MIT.txt": os.path.join(src, "svgmoji-noto-3.2.0", "package", "LICENSE"),
        "fluentui-emoji-package-MIT.txt": os.path.join(src, "fluentui-emoji-1.3.0", "package", "LICENSE"),
        "tuxpaint-stamps-copyright.txt": "/usr/share/doc/tuxpaint-stamps-default/copyright",
    }
    for name, path in files.items():
        if os.path.isfile(path):
            shutil.copyfile(path, os.path.join(ld, name))


# ---------------------------------------------------------------- main

def tuxpaint_version():
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "tuxpaint-stamps-default"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
        return r.stdout.decode().strip() or None
    except OSError:
        return None


def file_sha256(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def config(args):
    c = {
        "format_version": FORMAT_VERSION, "size": args.size, "limit": args.limit,
        "builder_sha256": file_sha256(os.path.abspath(__file__)),
        "fetch_script_sha256": args.script_hash,
        # The renderer's source, not its binary: the binary differs between
        # compilers and -march, the pictures do not.
        "renderer_sha256": file_sha256(os.path.join(HERE, "render_images.c")),
        "heldout_sha256": file_sha256(args.heldout), "tuxpaint_version": tuxpaint_version(),
        "tuxpaint_root": args.tuxpaint_root, "shard_samples": SHARD_SAMPLES,
    }
    c["id"] = hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()[:16]
    return c


def up_to_date(args, cfg):
    try:
        with open(os.path.join(args.out, "manifest.json"), encoding="utf-8") as f:
            man = json.load(f)
    except (OSError, ValueError):
        return False, "no manifest.json"
    if man.get("config", {}).get("id") != cfg["id"]:
        return False, "settings, scripts or held-out list changed"
    for split in man.get("splits", {}).values():
        for sh in split.get("shards", []):
            p = os.path.join(args.out, sh["name"])
            if not os.path.isfile(p) or os.path.getsize(p) != sh["bytes"]:
                return False, f"{sh['name']} missing or changed"
    if not os.path.isfile(os.path.join(args.out, "LICENSES.md")):
        return False, "LICENSES.md missing"
    return True, man


def build(args, cfg):
    t0 = time.time()
    held = read_heldout(args.heldout)
    if not os.path.isdir(args.tuxpaint_root):
        sys.exit(f"build_images: {args.tuxpaint_root} missing (install tuxpaint-stamps-default)")
    tux_version = cfg["tuxpaint_version"]
    if tux_version != TUXPAINT_VERSION_PINNED:
        log(f"warning: tuxpaint-stamps-default {tux_version}, the notes were made with {TUXPAINT_VERSION_PINNED}")

    planner = Planner(args)
    samples = planner.plan(held)
    found, missing, linked = assign_splits(samples, held)
    log(f"plan: {len(samples)} images; held-out concepts of {os.path.basename(args.heldout)} "
        f"found: {len(found)} of {len(held)}"
        + (f", missing: {' '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}" if missing else ""))
    if linked:
        log("plan: held out with their Fluent twins: "
            + ", ".join(f"{c} ({sp})" for c, sp in sorted(linked.items())))

    work = os.path.join(args.cache, f"work-{args.size}-{cfg['id']}")
    os.makedirs(work, exist_ok=True)
    work_lock = open(os.path.join(work, ".lock"), "w")
    fcntl.flock(work_lock, fcntl.LOCK_EX)
    for d in os.listdir(args.cache):
        # Renders left by interrupted runs with other settings or scripts are
        # stale; a folder still locked belongs to a build running now.
        if d.startswith("work-") and d != os.path.basename(work):
            try:
                with open(os.path.join(args.cache, d, ".lock"), "a") as lk:
                    fcntl.flock(lk, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    shutil.rmtree(os.path.join(args.cache, d), ignore_errors=True)
            except OSError:
                pass
    t1 = time.time()
    failed = render(samples, work, args.size, args.jobs, args.renderer)
    t2 = time.time()

    # Read the renders; wrong sizes count as failures too.
    good = []
    for s in samples:
        if s["key"] in failed:
            continue
        try:
            with open(s["webp"], "rb") as f:
                data = f.read()
        except OSError:
            failed[s["key"]] = "no output"
            continue
        if webp_size(data) != (args.size, args.size):
            failed[s["key"]] = f"rendered size {webp_size(data)} is not {args.size}x{args.size}"
            continue
        s["webp_bytes"] = data
        s["json"] = sample_json(s)
        good.append(s)
    by_key = {s["key"]: s for s in samples}
    for k, why in sorted(failed.items()):
        planner.skip(by_key[k]["source"], "render failed")
        log(f"skip: {k} ({by_key[k]['input']}): {why}")

    # Shards: remove the manifest first, so a half-written set never looks whole.
    os.makedirs(args.out, exist_ok=True)
    man_path = os.path.join(args.out, "manifest.json")
    if os.path.exists(man_path):
        os.remove(man_path)
    splits = {}
    written = set()
    for split in SPLITS:
        part = sorted((s for s in good if s["split"] == split), key=order_key)
        shards = []
        for i in range(0, len(part), SHARD_SAMPLES):
            name = f"{split}-{i // SHARD_SAMPLES:05d}.tar"
            chunk = part[i:i + SHARD_SAMPLES]
            size, sha = write_shard(os.path.join(args.out, name), chunk)
            shards.append({"name": name, "samples": len(chunk), "bytes": size, "sha256": sha})
            written.add(name)
            log(f"pack: {name}: {len(chunk)} samples, {size / 1e6:.1f} MB")
        per_source = {src: sum(1 for s in part if s["source"] == src) for src in SOURCE_ORDER}
        splits[split] = {"samples": len(part), "concepts": len({s["concept"] for s in part}),
                         "per_source": per_source, "shards": shards}
    for f in os.listdir(args.out):
        if re.fullmatch(r"(%s)-\d{5}\.tar" % "|".join(SPLITS), f) and f not in written:
            os.remove(os.path.join(args.out, f))
        elif f.startswith(".") and f.endswith(".partial"):
            os.remove(os.path.join(args.out, f))
    write_licenses(args.out, args, tux_version)

    train_concepts = {s["concept"] for s in good if s["split"] == "train"}
    val_concepts = {s["concept"] for s in good if s["split"] == "val"}
    val_seen, val_new = val_concepts & train_concepts, val_concepts - train_concepts
    fluent_unmatched = sorted(set(planner.notes["fluent-flat"]) | set(planner.notes["fluent-modern"]))
    man = {
        "description": "Image-caption pairs (WebDataset: KEY.webp, KEY.txt, KEY.json), built by data/fetch-images.sh",
        "config": cfg,
        "image": {"size": args.size, "format": "webp lossless", "background": "white"},
        "caption_format": "<label>. style: <style>. tags: <tag>, <tag>.  |  <Tux Paint sentence> style: tux paint stamp.",
        "sources": {src: {"package": SOURCES[src]["package"], "style": SOURCES[src]["style"],
                          "license": SOURCES[src]["license"],
                          "samples": sum(1 for s in good if s["source"] == src),
                          "skipped": planner.skipped[src]}
                    for src in SOURCE_ORDER},
        "splits": splits,
        "val": {"rule": "not held out, and int.from_bytes(sha256(salt + key)[:8], 'big') % 10000 < per_10000",
                "salt": VAL_SALT.decode("ascii"), "per_10000": VAL_PER_10000,
                "concepts_also_in_train": len(val_seen), "concepts_not_in_train": len(val_new)},
        "total_samples": len(good),
        "heldout": {"file": os.path.basename(args.heldout), "listed": len(held), "found": len(found),
                    "missing": missing, "linked_hex_concepts": linked},
        "fluent_without_hex_match": fluent_unmatched,
    }
    tmp = man_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(man, f, ensure_ascii=False, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, man_path)
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    t3 = time.time()

    log("summary: split   samples  " + "  ".join(f"{s:>13}" for s in SOURCE_ORDER))
    for split in SPLITS:
        row = splits[split]
        log(f"summary: {split:<6} {row['samples']:>8}  "
            + "  ".join(f"{row['per_source'][s]:>13}" for s in SOURCE_ORDER))
    skipped = {src: v for src, v in planner.skipped.items() if any(v.values())}
    log(f"summary: skipped: {json.dumps(skipped)}")
    log(f"summary: val: {splits['val']['samples']} of {splits['train']['samples'] + splits['val']['samples']} "
        f"non-held-out samples; {len(val_seen)} of its {len(val_concepts)} concepts are in train in other styles")
    log(f"summary: held-out concepts found {len(found)}/{len(held)}; "
        f"plan {t1 - t0:.0f} s, render {t2 - t1:.0f} s, pack {t3 - t2:.0f} s; output {args.out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--renderer", default=os.path.join(os.path.dirname(HERE), "bin", "render_images"),
                    help="the render_images program (default: the repository's bin/render_images)")
    ap.add_argument("--tuxpaint-root", default=TUXPAINT_ROOT, help="Tux Paint stamps folder (tests)")
    ap.add_argument("--script-hash", default="")
    ap.add_argument("--keep-work", action="store_true", help="keep the per-image renders")
    ap.add_argument("command", choices=("check", "build"))
    args = ap.parse_args()
    args.out = os.path.abspath(args.out)
    args.cache = os.path.abspath(args.cache)
    cfg = config(args)
    if args.command == "check":
        ok, why = up_to_date(args, cfg)
        if ok:
            counts = ", ".join(f"{k} {v['samples']}" for k, v in why["splits"].items())
            log(f"fetch-images: {args.out} is complete and up to date ({counts}); nothing to do")
            sys.exit(0)
        log(f"fetch-images: building {args.out} ({why})")
        sys.exit(1)
    os.makedirs(args.cache, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, ".lock"), "w") as lk:
        try:
            fcntl.flock(lk, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            sys.exit(f"build_images: another build is writing {args.out}")
        build(args, cfg)


if __name__ == "__main__":
    main()
