#!/usr/bin/env bash
# test_vae_service.sh - vae_service end to end on generated image shards
# (tests/make_image_shards.py, with one bad sample of each kind): train, exact
# resume, eval, encode to latent shards (skips counted, resumable, pinned to
# one VAE), decode, and the exit-2 errors for bad VAE folders and latents.
set -u
BIN=${BIN:-bin}
PY=/usr/bin/python3
export OMP_WAIT_POLICY=passive
. "$(dirname "$0")/check.sh"
[ -x "$BIN/vae_service" ] || { echo "FAIL vae_service: $BIN/vae_service not found"; exit 1; }
VS=$(realpath "$BIN/vae_service")
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
$PY tests/make_image_shards.py --out "$t" --shards 2 --per-shard 24 --size 16 --bad
data="$t/shard-*.tar"
targs=(--config configs/vae-tiny.json --data "$data" --size 16 --batch 8 --lr 2e-3 --log-every 10)
train() { "$VS" train "${targs[@]}" "$@"; }
# The same in the background with $! its pid, so that signals reach vae_service itself: OUT ERR ARGS...
train_bg() { local out=$1 err=$2; shift 2; "$VS" train "${targs[@]}" "$@" >"$out" 2>"$err" & }

# Training lowers the loss; the run logs the skipped samples by reason.
train --out "$t/a" --steps 60 >"$t/a.log" 2>"$t/a.err"
check "train exits 0" [ $? -eq 0 ]
first=$(grep -m1 '^step' "$t/a.log" | awk '{print $4}'); last=$(grep '^step' "$t/a.log" | tail -1 | awk '{print $4}')
check "training lowers the loss ($first -> $last)" $PY -c "import sys; sys.exit(not $last < 0.7 * $first)"
check "bad samples are skipped and counted by reason" \
    grep -q '48 good, 6 skipped (corrupt image: 1, not an image: 2, no caption: 1, bad utf-8: 1, duplicate key: 1)' "$t/a.err"
check "each skip is one line naming shard and key" grep -q 'skip .*shard-00001.tar bad_utf8: bad utf-8' "$t/a.err"
check "the VAE folder is a diffusers folder" [ -f "$t/a/config.json" -a -f "$t/a/diffusion_pytorch_model.safetensors" ]
train --out "$t/l1" --steps 2 --loss l1 >"$t/l1.log" 2>&1
check "train --loss l1 runs" grep -q '^step *2/2' "$t/l1.log"
train --out "$t/huber" --steps 2 --loss huber >/dev/null 2>"$t/huber.err"
rc=$?
check "train --loss huber exits 2 ($rc) with one line" [ $rc -eq 2 -a "$(wc -l <"$t/huber.err")" -eq 1 ]
check "... naming --loss" grep -q -- "--loss huber: expected l2 or l1" "$t/huber.err"
bad "train --precision fp16" "--precision fp16: expected bf16 or fp32" train --out "$t/fp16" --steps 2 --precision fp16
train --out "$t/f32" --steps 2 --precision fp32 >"$t/f32.log" 2>&1
check "train --precision fp32 runs" grep -q '^step *2/2' "$t/f32.log"

# An interrupted run resumed gives bitwise the same weights.
train --out "$t/b" --steps 60 --stop-at 30 >/dev/null 2>&1
train --out "$t/b" --steps 60 --resume auto >"$t/b.log" 2>&1
check "--resume auto continues from the checkpoint of step 30" grep -q "resuming $t/b/checkpoints/step_00000030 at step 30" "$t/b.log"
check "... to bitwise the same weights" \
    cmp -s "$t/a/diffusion_pytorch_model.safetensors" "$t/b/diffusion_pytorch_model.safetensors"
check "... keeping the newest 2 step folders" [ "$(ls "$t/b/checkpoints" | grep -c '^step_')" -eq 2 ]

# kill -9 in the middle of a run: --resume auto continues from its newest
# complete checkpoint to bitwise the weights of the run never stopped.
train_bg "$t/k.log" "$t/k.err" --out "$t/k" --steps 60 --save-every 5
pid=$!
for _ in $(seq 400); do [ -e "$t/k/checkpoints/step_00000010" ] && break; sleep 0.02; done
kill -9 $pid; wait $pid 2>/dev/null
check "kill -9 stopped the run before its end" sh -c "! grep -q '^saved' '$t/k.log'"
train --out "$t/k" --steps 60 --save-every 5 --resume auto >"$t/k2.log" 2>&1
check "... and --resume auto continues from a checkpoint it left" grep -q "resuming $t/k/checkpoints/step_" "$t/k2.log"
check "... to bitwise the same weights" \
    cmp -s "$t/a/diffusion_pytorch_model.safetensors" "$t/k/diffusion_pytorch_model.safetensors"
bad "--resume of a step folder that does not verify" "model.safetensors.index.json" \
    train --out "$t/k" --steps 60 --resume "$t/k/checkpoints/nonesuch"

# SIGTERM: the step is finished and saved, and the run exits 0.
train_bg "$t/s.log" "$t/s.err" --out "$t/s" --steps 100000
pid=$!
for _ in $(seq 400); do grep -q '^step' "$t/s.log" && break; sleep 0.02; done
kill -TERM $pid; wait $pid
rc=$?
check "SIGTERM ends the run with exit 0 ($rc)" [ $rc -eq 0 ]
step=$(sed -n 's/^stopped by a signal after step \([0-9]*\)$/\1/p' "$t/s.err")
check "... saying after which step ($step)" [ -n "$step" ]
check "... and saving that step" [ "$(readlink "$t/s/checkpoints/latest")" = "$(printf 'step_%08d' "${step:-0}")" ]
check "... and the diffusers folder" [ -f "$t/s/diffusion_pytorch_model.safetensors" ]

# eval: mean PSNR and an image grid.
"$VS" eval --vae "$t/a" --data "$data" --size 16 --grid "$t/grid.png" >"$t/eval.json" 2>/dev/null
check "eval prints the mean PSNR of 48 images" grep -q '"images":48,"psnr_db":' "$t/eval.json"
check "eval writes the image grid" [ -s "$t/grid.png" ]

# encode: one shard per input, dataset.json with counts, checksums, stats.
"$VS" encode --vae "$t/a" --data "$data" --out "$t/lat" --size 16 >"$t/enc.log" 2>&1
check "encode exits 0" [ $? -eq 0 ]
check "encode writes one latent shard per input" [ -f "$t/lat/shard-00000.safetensors" -a -f "$t/lat/shard-00001.safetensors" ]
check "dataset.json counts, checksums and normalizes every latent" $PY - "$t/lat" <<'PYEOF'
import json, sys, zlib, os
d = sys.argv[1]
ds = json.load(open(f"{d}/dataset.json"))
def crc32c(b):
    crc = 0xFFFFFFFF
    for x in b:
        crc ^= x
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF
ok = ds["count"] == 48 and ds["C"] == 4 and ds["h"] == 8 and len(ds["channel_std"]) == 4
for s in ds["shards"]:
    b = open(f"{d}/{s['file']}", "rb").read()
    ok &= s["bytes"] == len(b) and s["crc32c"] == f"{crc32c(b):08x}"
ok &= all(v > 0 for v in ds["channel_std"]) and "weights_crc32c" in ds["vae"]
sys.exit(0 if ok else 1)
PYEOF
"$VS" encode --vae "$t/a" --data "$data" --out "$t/lat" --size 16 >"$t/enc2.log" 2>&1
check "a rerun of encode skips the complete shards" grep -q '2 shards were already encoded' "$t/enc2.log"
"$VS" encode --vae "$t/b/../a" --data "$data" --out "$t/lat" --size 16 >/dev/null 2>&1
check "the same VAE by another path is accepted" [ $? -eq 0 ]
"$VS" init --config configs/vae-tiny.json --out "$t/other" --seed 9 >/dev/null
"$VS" encode --vae "$t/other" --data "$data" --out "$t/lat" --size 16 >/dev/null 2>"$t/err"
rc=$?
check "encoding into latents of another VAE exits 2 ($rc)" [ $rc -eq 2 ]
check "... with one line naming encode.json" grep -q 'encode.json: latents of another VAE' "$t/err"

# Real images (tests/data/real-64.tar: 24 emoji and stamps from the dataset):
# every one decodes and encodes, and each latent keeps its key and caption.
"$VS" encode --vae "$t/a" --data tests/data/real-64.tar --out "$t/real" --size 16 >"$t/real.log" 2>&1
check "real WebP images: 24 encoded, none skipped" grep -q 'dataset 24 latents in 1 shards (24 good, 0 skipped)' "$t/real.log"
check "... with the keys and captions of the shard" $PY - "$t/real/real-64.safetensors" tests/data/real-64.tar <<'PYEOF'
import json, struct, sys, tarfile
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n]); data = b[8 + n:]
def strings(name):
    o = h[name + "_offsets"]["data_offsets"]; offs = struct.unpack(f"<{(o[1] - o[0]) // 8}q", data[o[0]:o[1]])
    bb = h[name + "_bytes"]["data_offsets"]; raw = data[bb[0]:bb[1]]
    return [raw[offs[i]:offs[i + 1]].decode() for i in range(len(offs) - 1)]
tar = tarfile.open(sys.argv[2])
want = {m.name[:-4]: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".txt")}
keys, caps = strings("key"), strings("caption")
sys.exit(0 if len(keys) == 24 and all(want[k] == c for k, c in zip(keys, caps)) and h["mean"]["shape"] == [24, 4, 8, 8] else 1)
PYEOF

# decode: WebP images named by key.
"$VS" decode --vae "$t/a" --latents "$t/lat" --out "$t/dec" --limit 5 >/dev/null 2>&1
check "decode writes 5 WebP images named by key" [ "$(ls "$t/dec" | grep -c '^s00_.*\.webp$')" -eq 5 ]

# Under mpirun: encode splits the shards across ranks with the same result,
# and data-parallel training runs with rank 0 writing.
# (Open MPI's own allocations outlive MPI_Finalize: LeakSanitizer is off for
# the ranks; every other run here checks leaks in a sanitizer build.)
MPIRUN="mpirun --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY
        -x ASAN_OPTIONS=detect_leaks=0 -np 2"
OMP_NUM_THREADS=1 "$VS" encode --vae "$t/a" --data "$data" --out "$t/lat1" --size 16 >/dev/null 2>&1
$MPIRUN "$VS" encode --vae "$t/a" --data "$data" --out "$t/lat2" --size 16 >"$t/mpi.log" 2>&1
check "mpirun -np 2 encode exits 0" [ $? -eq 0 ]
same_shards() { cmp -s "$t/lat1/shard-00000.safetensors" "$t/lat2/shard-00000.safetensors" &&
                cmp -s "$t/lat1/shard-00001.safetensors" "$t/lat2/shard-00001.safetensors"; }
check "2 ranks encode every sample once, as 1 process does" same_shards
check "... and dataset.json counts all 48" grep -q '"count":.*48' "$t/lat2/dataset.json"
$MPIRUN "$VS" train --config configs/vae-tiny.json --data "$data" --size 16 --batch 4 --steps 6 --log-every 3 \
    --out "$t/m" >"$t/mpi_train.log" 2>&1
check "mpirun -np 2 train writes a VAE" [ -f "$t/m/diffusion_pytorch_model.safetensors" ]
check "... logging from rank 0 only" [ "$(grep -c '^step' "$t/mpi_train.log")" -eq 2 ]
check "... with batch 4 x 2 ranks" grep -q 'batch 4 x 2 ranks' "$t/mpi_train.log"
# Each rank keeps the Adam moments of its part only: the state file gathers
# them, and a resumed 2-rank run continues to the same bits.
$MPIRUN "$VS" train --config configs/vae-tiny.json --data "$data" --size 16 --batch 4 --steps 6 --stop-at 3 \
    --out "$t/m2" >/dev/null 2>&1
cp -r "$t/m2" "$t/m1"
$MPIRUN "$VS" train --data "$data" --size 16 --batch 4 --steps 6 --resume auto --out "$t/m2" >/dev/null 2>&1
check "mpirun -np 2 train stopped and resumed gives bitwise the same weights" \
    cmp -s "$t/m/diffusion_pytorch_model.safetensors" "$t/m2/diffusion_pytorch_model.safetensors"
# The same global batch on 1 rank (8 = 2 x 4): the same samples, so the same
# weights up to the order of the gradient sums.
OMP_NUM_THREADS=1 "$VS" train --data "$data" --size 16 --batch 8 --steps 6 --resume auto --out "$t/m1" >"$t/m1.log" 2>&1
check "a 2-rank run resumes on 1 rank" grep -q "resuming $t/m1/checkpoints/step_00000003 at step 3 (written by 2 ranks)" "$t/m1.log"
check "... to the weights of the 2-rank run (within 1e-3 of the largest; 3 more steps move them by 0.3)" $PY - "$t/m" "$t/m1" <<'PYEOF'
import json, struct, sys
def load(d):
    b = open(f"{d}/diffusion_pytorch_model.safetensors", "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n]); h.pop("__metadata__", None)
    return {k: struct.unpack(f"<{(v['data_offsets'][1] - v['data_offsets'][0]) // 4}f",
                             b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]) for k, v in h.items()}
a, b = load(sys.argv[1]), load(sys.argv[2])
worst = max(max(abs(x - y) for x, y in zip(a[k], b[k])) / max(max(abs(x) for x in a[k]), 1e-12) for k in a)
print("relative difference", worst, file=sys.stderr)
sys.exit(not (a.keys() == b.keys() and worst < 1e-3))
PYEOF

# Bad input: exit 2 with one line naming the file.
expect_2() {  # NAME PATTERN CMD...
    local name=$1 pattern=$2; shift 2
    "$@" >/dev/null 2>"$t/err"; local rc=$?
    if [ $rc -eq 2 ] && [ "$(wc -l <"$t/err")" -eq 1 ] && grep -q -- "$pattern" "$t/err"; then ok "$name"
    else fail "$name (exit $rc: $(head -c 300 "$t/err"))"; fi
}
mkdir -p "$t/novae" && cp "$t/a/config.json" "$t/novae/"
expect_2 "a VAE folder without weights exits 2" "no \*.safetensors" "$VS" eval --vae "$t/novae" --data "$data" --size 16
$PY - "$t/a" "$t/shape" <<'PYEOF'
import sys, os, shutil, json, struct
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
shutil.copy(f"{src}/config.json", dst)
b = open(f"{src}/diffusion_pytorch_model.safetensors", "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
h["encoder.conv_in.bias"]["shape"] = [4, 2]          # 8 floats, wrong shape
raw = json.dumps(h).encode()
raw += b" " * (-len(raw) % 8)
open(f"{dst}/diffusion_pytorch_model.safetensors", "wb").write(struct.pack("<Q", len(raw)) + raw + b[8 + n:])
PYEOF
expect_2 "a tensor of the wrong shape exits 2 naming it" "encoder.conv_in.bias" "$VS" eval --vae "$t/shape" --data "$data" --size 16
cat > "$t/vae8.json" <<'JSON'
{"block_out_channels": [8, 16], "layers_per_block": 1, "latent_channels": 8, "norm_num_groups": 4}
JSON
"$VS" init --config "$t/vae8.json" --out "$t/vae8" >/dev/null
expect_2 "latents of another VAE exit 2 in decode" "latents of another VAE" \
    "$VS" decode --vae "$t/vae8" --latents "$t/lat/shard-00000.safetensors" --out "$t/dec8"
echo '{"block_out_channels": [8]}' >"$t/nolatent.json"
expect_2 "a config without latent_channels exits 2" "field 'latent_channels': missing" \
    "$VS" init --config "$t/nolatent.json" --out "$t/x"
[ "$fails" -eq 0 ]
