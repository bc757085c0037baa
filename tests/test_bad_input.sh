#!/usr/bin/env bash
# test_bad_input.sh - how $BIN/trainer handles bad input (common/error.h):
# every broken checkpoint, config or batch file must stop it with exit status
# 2 and exactly one line on stderr naming the file and the tensor or field.
# The broken files are made with python3 from a checkpoint written by
# `trainer init` and a small valid batch (docs/model.md section 7);
# the valid originals must pass, so that each failure is for the right reason.
set -u
BIN=${BIN:-bin}
TRAINER=$BIN/trainer

if [ ! -x "$TRAINER" ]; then
    echo "FAIL trainer_exists: $TRAINER not found or not executable (build it first)"
    exit 1
fi
if ! command -v python3 >/dev/null; then
    echo "FAIL python3_exists: python3 is needed to craft the bad files"
    exit 1
fi

T=$(mktemp -d /tmp/test_bad_input.XXXXXX)
trap 'rm -rf "$T"' EXIT
failures=0

fail() {
    echo "FAIL $1: $2"
    failures=$((failures + 1))
}

stderr_text() { head -c 400 "$T/err" | tr '\n' ' '; }

# expect_ok NAME CMD...: the command exits 0.
expect_ok() {
    local name=$1
    shift
    "$@" >"$T/out" 2>"$T/err"
    local rc=$?
    if [ "$rc" -eq 0 ]; then echo "ok $name"; else fail "$name" "exit $rc, want 0 (stderr: $(stderr_text))"; fi
}

# expect_bad NAME WORD... -- CMD...: the command exits 2 with exactly one
# line on stderr, which contains every WORD (the file, the tensor or field).
expect_bad() {
    local name=$1
    shift
    local words=()
    while [ "$1" != "--" ]; do
        words+=("$1")
        shift
    done
    shift
    # Stopping with die_input from deep inside a command is by design and
    # leaves live heap blocks behind; in a sanitizer build LeakSanitizer
    # would report them and turn the status 2 into 1.
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" "$@" >"$T/out" 2>"$T/err"
    local rc=$?
    local lines
    lines=$(awk 'END { print NR }' "$T/err")
    if [ "$rc" -ne 2 ]; then
        fail "$name" "exit $rc, want 2 (stderr: $(stderr_text))"
        return
    fi
    if [ "$lines" -ne 1 ]; then
        fail "$name" "$lines lines on stderr, want 1 (stderr: $(stderr_text))"
        return
    fi
    local w
    for w in "${words[@]}"; do
        if ! grep -qF -- "$w" "$T/err"; then
            fail "$name" "message does not name '$w': $(stderr_text)"
            return
        fi
    done
    echo "ok $name"
}

cat >"$T/tiny.json" <<'EOF'
{"vocab_size":64,"hidden_size":32,"num_hidden_layers":2,"num_attention_heads":4,
 "intermediate_size":48,"latent_channels":4,"latent_size":4,"patch_size":2,
 "max_image_patches":4}
EOF

expect_ok init_valid "$TRAINER" init --config "$T/tiny.json" --out "$T/ck" --seed 1
if [ ! -f "$T/ck/config.json" ] || [ ! -f "$T/ck/model.safetensors" ]; then
    fail init_writes_checkpoint "$T/ck lacks config.json or model.safetensors"
    exit 1
fi
echo "ok init_writes_checkpoint"

# Craft every file. Names of files and folders are chosen not to contain the
# tensor or field names checked below, so a match means the message names it.
if ! python3 - "$T" <<'EOF'; then
import json, os, random, shutil, struct, sys

T = sys.argv[1]

def read_st(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]

def write_st(path, header, data, overlong=False):
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    # overlong: a header length one byte more than the rest of the file
    n = len(h) + len(data) + 1 if overlong else len(h)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + h + data)

def tensors(entries):
    """Header and data section for [(name, dtype, shape, bytes)]."""
    header, data = {}, b""
    for name, dtype, shape, raw in entries:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return header, data

good = os.path.join(T, "ck")
cfg = json.load(open(os.path.join(good, "config.json")))
model_header, model_data = read_st(os.path.join(good, "model.safetensors"))

def checkpoint(name, config=cfg):
    d = os.path.join(T, name)
    os.mkdir(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    shutil.copy(os.path.join(good, "model.safetensors"), d)
    return os.path.join(d, "model.safetensors")

def model_with(name, change):
    header = json.loads(json.dumps(model_header))
    change(header)
    write_st(checkpoint(name), header, model_data)

# Re-written unchanged: proves the writer above makes files the trainer takes.
model_with("ck_same", lambda h: None)

# Cut inside the data of the last tensor in the file.
last = max((k for k in model_header if k != "__metadata__"),
           key=lambda k: model_header[k]["data_offsets"][1])
b, e = model_header[last]["data_offsets"]
raw = open(os.path.join(good, "model.safetensors"), "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
open(checkpoint("ck_cut"), "wb").write(raw[:8 + n + (b + e) // 2])
open(os.path.join(T, "last_tensor"), "w").write(last)
open(checkpoint("ck_short"), "wb").write(raw[:5])

write_st(checkpoint("ck_hlen"), model_header, model_data, overlong=True)

def move_outside(h):
    b, e = h["lm_head.weight"]["data_offsets"]
    h["lm_head.weight"]["data_offsets"] = [len(model_data), len(model_data) + e - b]
model_with("ck_offs", move_outside)

def as_i32(h):
    h["lm_head.weight"]["dtype"] = "I32"
model_with("ck_dtype", as_i32)

def transpose(h):
    h["lm_head.weight"]["shape"] = h["lm_head.weight"]["shape"][::-1]
model_with("ck_shape", transpose)

def drop_norm(h):
    del h["model.norm.weight"]
model_with("ck_gone", drop_norm)

def config_with(**changes):
    c = dict(cfg)
    for k, v in changes.items():
        if v is None:
            del c[k]
        else:
            c[k] = v
    return c

bad_configs = {
    "cfg_nohidden": config_with(hidden_size=None),
    "cfg_zeroheads": config_with(num_attention_heads=0),
    "cfg_indivisible": config_with(hidden_size=30),
    "cfg_latent": config_with(patch_size=3),
}
for name, c in bad_configs.items():
    checkpoint(name, c)
    with open(os.path.join(T, name + ".json"), "w") as f:
        json.dump(c, f)

# The batch: B=1, L=16. A document BOS t t BOI p0..p3 EOI t t EOS, then pads.
V, T_steps = cfg["vocab_size"], cfg["diffusion_steps"]
bos, eos, boi, eoi = (cfg[k] for k in ("bos_token_id", "eos_token_id",
                                       "boi_token_id", "eoi_token_id"))
C, S = cfg["latent_channels"], cfg["latent_size"]
tokens = [bos, 5, 6, boi, 0, 0, 0, 0, eoi, 7, 8, eos, 0, 0, 0, 0]
modality = [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 2, 2, 2, 2]
doc = [0] * 12 + [1, 2, 3, 4]
image = [-1] * 4 + [0] * 4 + [-1] * 8
rng = random.Random(0)
latents = [rng.gauss(0, 1) for _ in range(C * S * S)]
noise = [rng.gauss(0, 1) for _ in range(C * S * S)]

def i32(v): return struct.pack("<%di" % len(v), *v)
def f32(v): return struct.pack("<%df" % len(v), *v)

def batch(name, tokens=tokens, timestep=500, tokens_dtype="I32", drop=None, latents=latents, noise=noise):
    entries = [
        ("tokens", tokens_dtype, [1, 16],
         i32(tokens) if tokens_dtype == "I32" else f32(tokens)),
        ("modality", "I32", [1, 16], i32(modality)),
        ("doc", "I32", [1, 16], i32(doc)),
        ("image", "I32", [1, 16], i32(image)),
        ("latents", "F32", [1, C, S, S], f32(latents)),
        ("noise", "F32", [1, C, S, S], f32(noise)),
        ("timesteps", "I32", [1], i32([timestep])),
    ]
    header, data = tensors([e for e in entries if e[0] != drop])
    write_st(os.path.join(T, name), header, data)

batch("b_good.safetensors")
batch("b_nomod.safetensors", drop="modality")
batch("b_float.safetensors", tokens_dtype="F32")
batch("b_vocab.safetensors", tokens=tokens[:1] + [V] + tokens[2:])
batch("b_zero.safetensors", timestep=0)
batch("b_late.safetensors", timestep=T_steps + 1)
batch("b_nan.safetensors", latents=latents[:3] + [float("nan")] + latents[4:])
batch("b_inf.safetensors", noise=noise[:1] + [float("inf")] + noise[2:])

# Sizes that each pass their own check but whose products wrap, and a model
# larger than any machine's memory.
for name, changes in {"wrap": dict(hidden_size=1073741824, num_hidden_layers=1048576, num_attention_heads=4),
                      "huge": dict(vocab_size=1073741824, hidden_size=1073741824, intermediate_size=268435456,
                                   num_attention_heads=4, max_image_patches=268435446)}.items():
    c = dict(cfg)
    c.update(changes)
    json.dump(c, open(os.path.join(T, "cfg_%s.json" % name), "w"))
EOF
    fail craft_files "python3 could not craft the bad files"
    exit 1
fi

LAST=$(cat "$T/last_tensor")
GOOD=$T/b_good.safetensors
loss() { "$TRAINER" loss --ckpt "$1" --batch "$2"; }

expect_ok loss_valid loss "$T/ck" "$GOOD"
expect_ok loss_rewritten_checkpoint loss "$T/ck_same" "$GOOD"

expect_bad model_truncated model.safetensors "$LAST" -- loss "$T/ck_cut" "$GOOD"
expect_bad model_truncated_header model.safetensors -- loss "$T/ck_short" "$GOOD"
expect_bad model_header_length model.safetensors -- loss "$T/ck_hlen" "$GOOD"
expect_bad model_offsets_outside model.safetensors lm_head.weight -- loss "$T/ck_offs" "$GOOD"
expect_bad model_wrong_dtype model.safetensors lm_head.weight -- loss "$T/ck_dtype" "$GOOD"
expect_bad model_wrong_shape model.safetensors lm_head.weight -- loss "$T/ck_shape" "$GOOD"
# Weights may be spread over several *.safetensors files (docs/model.md section 6), so
# a tensor found in none of them may be reported against the folder.
expect_bad model_missing_tensor ck_gone model.norm.weight -- loss "$T/ck_gone" "$GOOD"

expect_bad config_missing_field config.json hidden_size -- loss "$T/cfg_nohidden" "$GOOD"
expect_bad config_zero_heads config.json num_attention_heads -- loss "$T/cfg_zeroheads" "$GOOD"
expect_bad config_hidden_not_divisible config.json hidden_size -- loss "$T/cfg_indivisible" "$GOOD"
expect_bad config_patch_not_dividing config.json patch_size -- loss "$T/cfg_latent" "$GOOD"

for c in nohidden:hidden_size zeroheads:num_attention_heads \
         indivisible:hidden_size latent:patch_size; do
    expect_bad "init_config_${c%%:*}" "cfg_${c%%:*}.json" "${c#*:}" -- \
        "$TRAINER" init --config "$T/cfg_${c%%:*}.json" --out "$T/out_${c%%:*}"
done

expect_bad batch_missing_modality b_nomod.safetensors modality -- loss "$T/ck" "$T/b_nomod.safetensors"
expect_bad batch_tokens_dtype b_float.safetensors tokens -- loss "$T/ck" "$T/b_float.safetensors"
expect_bad batch_token_beyond_vocab b_vocab.safetensors tokens -- loss "$T/ck" "$T/b_vocab.safetensors"
expect_bad batch_timestep_zero b_zero.safetensors timesteps -- loss "$T/ck" "$T/b_zero.safetensors"
expect_bad batch_timestep_beyond_T b_late.safetensors timesteps -- loss "$T/ck" "$T/b_late.safetensors"
expect_bad batch_nan_latent b_nan.safetensors latents "NaN or an infinity" -- loss "$T/ck" "$T/b_nan.safetensors"
expect_bad batch_inf_noise b_inf.safetensors noise "NaN or an infinity" -- loss "$T/ck" "$T/b_inf.safetensors"
expect_bad init_sizes_that_wrap overflows -- "$TRAINER" init --config "$T/cfg_wrap.json" --out "$T/out_wrap"
expect_bad init_larger_than_memory "GB for its weights and gradients" -- \
    "$TRAINER" init --config "$T/cfg_huge.json" --out "$T/out_huge"

# --device: an unknown name, and cuda in this (plain make) build.
expect_bad device_unknown tpu -- "$TRAINER" loss --ckpt "$T/ck" --batch "$GOOD" --device tpu
expect_bad device_cuda_not_built cuda "make CUDA=1" -- "$TRAINER" loss --ckpt "$T/ck" --batch "$GOOD" --device cuda

[ "$failures" -eq 0 ]
