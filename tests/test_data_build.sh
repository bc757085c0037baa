#!/usr/bin/env bash
# test_data_build.sh - the image data build: data/build_images.py driving
# bin/render_images, run with --limit 20 on a small synthetic copy of its
# sources (openmoji.json, SVGs of every source, a Noto sprite, Tux Paint
# stamps with an SVG, a PNG and a broken SVG), so it needs no network and no
# Debian stamps. Checks:
#   - splits: val disjoint from train; val = exactly the non-held-out keys the
#     pinned hash rule picks (stable across runs and versions, a few known keys
#     pinned too), about 3% of any large key set; held-out concepts (with all
#     their styles and skin tones) only in test/ood, never in train or val
#   - shards agree with manifest.json; every image is S x S; --limit holds
#   - bad inputs are skipped, counted and logged once each
#   - the PNG stamp and a non-square SVG are fitted and centred on white
#   - the same shards byte for byte with 1 thread and with 2 (determinism)
#   - `check` is a no-op on a complete output, and notices a changed shard
#   - render_images: exit 2 with one stderr line on bad arguments or job lines,
#     one "fail" line and no file for a broken input
# The renderer is the plain build (bin/render_images, made here when missing):
# under SANITIZE=1 too, since LeakSanitizer reports glib's and fontconfig's
# process-lifetime caches as leaks.
set -u
cd "$(dirname "$0")/.."
. tests/check.sh
PY=/usr/bin/python3
RENDER=bin/render_images

if [ ! -x "$RENDER" ] || [ data/render_images.c -nt "$RENDER" ]; then
    env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s "$RENDER" >/dev/null 2>&1
fi
if [ ! -x "$RENDER" ]; then
    fail "render_images_built: make bin/render_images failed (needs librsvg2-dev, libwebp-dev)"
    exit 1
fi
command -v dwebp >/dev/null || { fail "dwebp_exists: the webp package is needed to decode the renders"; exit 1; }

T=$(mktemp -d /tmp/test_data_build.XXXXXX)
trap 'rm -rf "$T"' EXIT

# ---------------------------------------------------------------- renderer errors
bad "render_images_unknown_arg" "unknown argument" "$RENDER" --bogus
bad "render_images_bad_threads" "--threads" "$RENDER" --threads 0
bad "render_images_bad_job_line" "stdin line 1" sh -c "printf 'only-one-field\n' | $RENDER"
bad "render_images_bad_size" "SIZE must be" sh -c "printf 'a.svg\t$T/x.webp\t0\n' | $RENDER"

printf '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><rect width="10" height="10" fill="#00f"/></svg>' >"$T/good.svg"
printf '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><rect width=' >"$T/broken.svg"
printf '%s\t%s\t16\n%s\t%s\t16\n' "$T/good.svg" "$T/good.webp" "$T/broken.svg" "$T/broken.webp" \
    | "$RENDER" --threads 2 >"$T/r.out" 2>"$T/r.err"
rc=$?
nfail=$(grep -c "^fail	$T/broken.webp	" "$T/r.out")
if [ $rc -eq 1 ] && [ "$nfail" -eq 1 ] && [ "$(wc -l <"$T/r.out")" -eq 1 ] && [ -s "$T/good.webp" ] \
        && [ ! -e "$T/broken.webp" ] && [ -z "$(find "$T" -name '*.tmp')" ]; then
    ok "render_images_broken_input: exit 1, one fail line ($(cut -f3 "$T/r.out" | head -c 120)), good one written"
else
    fail "render_images_broken_input: rc $rc, stdout: $(head -c 300 "$T/r.out"), stderr: $(head -c 300 "$T/r.err")"
fi

# ---------------------------------------------------------------- fixture and builds
"$PY" - "$T" <<'EOF'
import json, os, struct, sys, zlib
T = sys.argv[1]
src = os.path.join(T, "cache", "src")
om_pkg = os.path.join(src, "openmoji-17.0.0", "package")
os.makedirs(os.path.join(om_pkg, "data"))
os.makedirs(os.path.join(om_pkg, "color", "svg"))

def svg(color, w=72, h=72):
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">'
            f'<rect width="{w}" height="{h}" fill="{color}"/></svg>')

def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)

def color(i):
    return "#%02x%02x%02x" % ((i * 53) % 256, (i * 97) % 256, (i * 151) % 256)

# 30 faces, a thumbs up with a skin tone, a brand logo (dropped).
entries = []
for i in range(30):
    entries.append({"hexcode": "%X" % (0x1F600 + i), "annotation": f"test face {i}",
                    "group": "smileys-emotion", "subgroups": "face-smiling", "skintone": "",
                    "skintone_base_hexcode": "", "tags": "alpha, beta", "openmoji_tags": ""})
entries.append({"hexcode": "1F44D", "annotation": "thumbs up", "group": "people-body",
                "subgroups": "hand-fingers-closed", "skintone": "", "skintone_base_hexcode": "",
                "tags": "hand, up", "openmoji_tags": ""})
entries.append({"hexcode": "1F44D-1F3FB", "annotation": "thumbs up: light skin tone",
                "group": "people-body", "subgroups": "hand-fingers-closed", "skintone": "1",
                "skintone_base_hexcode": "1F44D", "tags": "", "openmoji_tags": ""})
entries.append({"hexcode": "E0A0", "annotation": "some brand", "group": "extras-openmoji",
                "subgroups": "brand", "skintone": "", "skintone_base_hexcode": "", "tags": "",
                "openmoji_tags": ""})
json.dump(entries, open(os.path.join(om_pkg, "data", "openmoji.json"), "w"))
for i, e in enumerate(entries):
    write(os.path.join(om_pkg, "color", "svg", e["hexcode"] + ".svg"), svg(color(i)))

# twemoji: lower-case names; 1f600 is broken (skipped and counted), 1f9ff is
# not in openmoji.json (skipped); 33 files, so --limit 20 cuts.
tw = os.path.join(src, "twemoji-svg-15.0.0", "package")
for i, e in enumerate(entries[:-1]):
    body = svg(color(i + 7)) if e["hexcode"] != "1F600" else '<svg xmlns="http://www.w3.org/2000/svg"><rect'
    write(os.path.join(tw, e["hexcode"].lower() + ".svg"), body)
write(os.path.join(tw, "1f9ff.svg"), svg("#123456"))

# noto: one sprite; build_images.py splits it.
children = "".join(f'<svg id="{e["hexcode"]}" viewBox="0 0 128 128"><circle cx="64" cy="64" r="60" fill="{color(i + 3)}"/></svg>'
                   for i, e in enumerate(entries[:-1]))
write(os.path.join(src, "svgmoji-noto-3.2.0", "package", "sprites", "all.svg"),
      f'<svg xmlns="http://www.w3.org/2000/svg">{children}</svg>')

# fluent: names by slug, skin tones as suffixes, one name openmoji lacks.
fl = os.path.join(src, "fluentui-emoji-1.3.0", "package", "icons")
names = [f"test-face-{i}" for i in range(18)] + ["thumbs-up-default", "thumbs-up-light", "only-fluent-thing"]
for variant in ("flat", "modern"):
    for i, n in enumerate(names):
        write(os.path.join(fl, variant, n + ".svg"), svg(color(i + 11)))

# Tux Paint: 22 stamps; a03 is held out, a05 a wide SVG, a06 a PNG (40 x 20,
# red), a07 has no image, a08 a broken SVG.
tux = os.path.join(T, "tuxpaint")
def png(w, h, rgb):
    raw = b"".join(b"\0" + bytes(rgb) * w for _ in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
for i in range(22):
    base = os.path.join(tux, "animals", f"a{i:02d}")
    write(base + ".txt", f"A test animal number {i}\nfr=Un animal\n")
    if i == 5:
        write(base + ".svg", svg("#0000ff", 100, 50))
    elif i == 6:
        with open(base + ".png", "wb") as f:
            f.write(png(40, 20, (255, 0, 0)))
    elif i == 7:
        pass
    elif i == 8:
        write(base + ".svg", "<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'><g>")
    else:
        write(base + ".svg", svg(color(i + 13)))

write(os.path.join(T, "heldout.tsv"),
      "# test list\ntest\t1F44D\nood\t1F605\nood\ttuxpaint:animals/a03\ntest\tfluent:only-fluent-thing\n"
      "test\t1F609\n")   # openmoji_1F609 is a key the val rule picks: held out wins
EOF

build() { # OUT JOBS [command]
    "$PY" data/build_images.py --size 64 --limit 20 --out "$1" --cache "$T/cache" --jobs "$2" \
        --heldout "$T/heldout.tsv" --renderer "$RENDER" --tuxpaint-root "$T/tuxpaint" \
        --script-hash test "${3:-build}"
}
if build "$T/out1" 2 >"$T/build1.log" 2>&1; then ok "build_limit20: $(grep "^summary: val:" "$T/build1.log")"
else fail "build_limit20: exited non-zero: $(tail -n 5 "$T/build1.log" | tr '\n' ' ')"; fi
if build "$T/out2" 1 >"$T/build2.log" 2>&1; then ok "build_limit20_one_thread"
else fail "build_limit20_one_thread: $(tail -n 5 "$T/build2.log" | tr '\n' ' ')"; fi

# ---------------------------------------------------------------- the output
"$PY" - "$T" <<'EOF'
import hashlib, json, os, re, subprocess, sys, tarfile
T = sys.argv[1]
sys.dont_write_bytecode = True     # no data/__pycache__ in the work tree
sys.path.insert(0, "data")
import build_images as B
fails = 0
def ok(name): print("ok " + name)
def fail(name, why):
    global fails
    fails += 1
    print(f"FAIL {name}: {why}")
def check(name, cond, why=""):
    ok(name) if cond else fail(name, why)

out = os.path.join(T, "out1")
man = json.load(open(os.path.join(out, "manifest.json")))
held = B.read_heldout(os.path.join(T, "heldout.tsv"))

# Every shard: members in order, JSON split = shard split, S x S images.
samples, order_ok, size_ok, split_ok = {}, True, True, True
shard_re = re.compile(r"(train|val|test|ood)-\d{5}\.tar")
names = sorted(f for f in os.listdir(out) if f.endswith(".tar"))
check("shard_names", all(shard_re.fullmatch(f) for f in names), names)
for f in names:
    split = f.split("-")[0]
    with tarfile.open(os.path.join(out, f)) as tar:
        members = tar.getmembers()
        for i in range(0, len(members), 3):
            trio = members[i:i + 3]
            key = trio[0].name.rsplit(".", 1)[0]
            if [m.name for m in trio] != [key + ".webp", key + ".txt", key + ".json"]:
                order_ok = False
            webp = tar.extractfile(trio[0]).read()
            meta = json.loads(tar.extractfile(trio[2]).read())
            size_ok &= B.webp_size(webp) == (64, 64)
            split_ok &= meta["split"] == split
            if key in samples:
                fail("unique_keys", f"{key} twice")
            samples[key] = dict(meta, shard_split=split, webp=webp)
check("members_in_order", order_ok)
check("images_64x64", size_ok)
check("json_split_is_shard_split", split_ok)

by_split = {s: {k for k, v in samples.items() if v["shard_split"] == s} for s in B.SPLITS}
counts = {s: len(v) for s, v in by_split.items()}
check("manifest_counts", {s: man["splits"][s]["samples"] for s in B.SPLITS} == counts
      and man["total_samples"] == len(samples), f"manifest {man['splits']} vs shards {counts}")
check("val_disjoint_from_train", not (by_split["val"] & by_split["train"]))
check("val_not_empty", counts["val"] >= 1, counts)

# The pinned rule, written out independently: any change to it fails here.
def rule(key):
    h = hashlib.sha256(b"transfusion-val-v1:" + key.encode()).digest()
    return int.from_bytes(h[:8], "big") % 10000 < 300
nonheld = {k for k, v in samples.items() if v["concept"] not in held and v["shard_split"] in ("train", "val")}
wrong = sorted(k for k in nonheld if (samples[k]["shard_split"] == "val") != rule(k))
check("val_is_the_hash_rule", not wrong, wrong[:5])
# Keys of the real data set, and the split the rule gives them (stable across versions).
pinned = {"openmoji_1F600": False, "twemoji_1F44D": False, "noto_1F1EB-1F1F7": False,
          "tuxpaint_animals__birds__duck": False, "fluent-flat_angry-face": True,
          "twemoji_1F9CE-1F3FB": True, "tuxpaint_symbols__shapes__pawprint": True}
got = {k: B.in_val(k) for k in pinned}
check("val_pinned_keys", got == pinned, got)
frac = sum(B.in_val(f"source_key-{i}") for i in range(100000)) / 100000
check("val_about_3_percent", 0.028 <= frac <= 0.032, frac)

# Held-out concepts: every style and skin tone in its split, never in train or val.
leaks = sorted(k for k, v in samples.items() if v["concept"] in held and v["shard_split"] in ("train", "val"))
check("heldout_never_in_train_or_val", not leaks, leaks)
want = {"openmoji_1F44D": "test", "openmoji_1F44D-1F3FB": "test", "twemoji_1F44D-1F3FB": "test",
        "fluent-flat_thumbs-up-default": "test", "noto_1F605": "ood", "tuxpaint_animals__a03": "ood",
        "fluent-modern_only-fluent-thing": "test", "openmoji_1F609": "test"}
got = {k: samples.get(k, {}).get("shard_split") for k in want}
check("heldout_splits", got == want, got)
check("heldout_found", man["heldout"]["found"] == 5, man["heldout"])

# --limit 20 per source; the bad inputs skipped and counted.
planned = {s: man["sources"][s]["samples"] + sum(man["sources"][s]["skipped"].get(r, 0)
                                               for r in ("render failed", "hex code not in openmoji.json"))
           for s in B.SOURCE_ORDER}
check("limit_20", all(n <= 20 for n in planned.values()) and planned["twemoji"] == 20, planned)
sk = {s: man["sources"][s]["skipped"] for s in B.SOURCE_ORDER}
check("bad_svg_skipped_and_counted", sk["twemoji"].get("render failed") == 1
      and sk["tuxpaint"].get("render failed") == 1 and "twemoji_1F600" not in samples, sk)
check("no_image_stamp_skipped", sk["tuxpaint"].get("no image beside the .txt") == 1, sk)
check("brand_dropped", sk["openmoji"].get("brand logo dropped") == 1, sk)
log = open(os.path.join(T, "build1.log")).read()
skips = re.findall(r"^skip: (\S+) ", log, re.M)
check("one_log_line_per_bad_file", sorted(skips) == ["tuxpaint_animals__a08", "twemoji_1F600"], skips)

# The PNG stamp (40 x 20 red) and the wide SVG (100 x 50 blue): fitted to the
# width, centred, white above and below.
def pixels(webp):
    p = os.path.join(T, "x.webp")
    open(p, "wb").write(webp)
    ppm = subprocess.run(["dwebp", "-quiet", p, "-ppm", "-o", "-"], stdout=subprocess.PIPE, check=True).stdout
    parts = ppm.split(b"\n", 3)
    return parts[3]
def band(key, rgb):
    px = pixels(samples[key]["webp"])
    row = lambda y: {px[(y * 64 + x) * 3:(y * 64 + x) * 3 + 3] for x in range(64)}
    white, ink = {b"\xff\xff\xff"}, {bytes(rgb)}
    return (all(row(y) == white for y in list(range(0, 15)) + list(range(49, 64)))
            and all(row(y) == ink for y in range(17, 47)))
check("png_stamp_centred", band("tuxpaint_animals__a06", (255, 0, 0)))
check("wide_svg_centred", band("tuxpaint_animals__a05", (0, 0, 255)))

# Determinism: the same shards with 1 thread as with 2.
m2 = json.load(open(os.path.join(T, "out2", "manifest.json")))
sh = lambda m: {x["name"]: x["sha256"] for s in m["splits"].values() for x in s["shards"]}
check("same_shards_any_thread_count", sh(man) == sh(m2) and len(sh(man)) >= 3, (sh(man), sh(m2)))
sys.exit(1 if fails else 0)
EOF

# ---------------------------------------------------------------- a crashing renderer
# A stand-in that dies (SIGSEGV) whenever its jobs include stamp a10, after
# rendering the others: the build must retry the lost ones one per process,
# so that only a10 fails, logged and counted.
cat >"$T/crashy" <<EOF2
#!/usr/bin/env bash
jobs=\$(cat)
grep -v '/a10\.svg	' <<<"\$jobs" | "$PWD/$RENDER" "\$@"
grep -q '/a10\.svg	' <<<"\$jobs" && kill -SEGV \$\$
exit 0
EOF2
chmod +x "$T/crashy"
"$PY" data/build_images.py --size 64 --limit 20 --out "$T/out3" --cache "$T/cache" --jobs 2 \
    --heldout "$T/heldout.tsv" --renderer "$T/crashy" --tuxpaint-root "$T/tuxpaint" \
    --script-hash test build >"$T/build3.log" 2>&1
rc=$?
n1=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["total_samples"])' "$T/out1/manifest.json" 2>/dev/null)
n3=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["total_samples"])' "$T/out3/manifest.json" 2>/dev/null)
if [ $rc -eq 0 ] && [ -n "$n1" ] && [ "$n3" = $((n1 - 1)) ] && grep -q '^skip: tuxpaint_animals__a10 .*died (signal 11)' "$T/build3.log"; then
    ok "renderer_crash_isolated: $(grep '^skip: tuxpaint_animals__a10' "$T/build3.log" | head -c 150)"
else
    fail "renderer_crash_isolated: rc $rc, samples $n3 (want $n1 - 1): $(grep -E '^(skip|render)' "$T/build3.log" | tail -n 4 | tr '\n' ' ')"
fi

# ---------------------------------------------------------------- up to date
if build "$T/out1" 2 check >"$T/check.log" 2>&1 && grep -q "nothing to do" "$T/check.log"; then ok "check_up_to_date_is_noop"
else fail "check_up_to_date_is_noop: $(cat "$T/check.log")"; fi
printf 'x' >>"$T/out1/val-00000.tar"
if build "$T/out1" 2 check >"$T/check.log" 2>&1; then fail "check_notices_changed_shard: said up to date"
else ok "check_notices_changed_shard: $(head -c 120 "$T/check.log")"; fi

[ "$fails" -eq 0 ]
