#!/usr/bin/env bash
# bench_unet.sh - the U-Net image path's cost (issue 17): bench_vs_torch.sh
# on the reference config with the linear path (configs/bench.json) and with
# the U-Net path (the same transformer and positions, "image_encoder":
# "unet", unet_channels UNET_CHANNELS, default [64,128]), each against the
# PyTorch reference of the same config on the same batch. Prints both
# summaries and the U-Net's cost: its trainer step over the linear one's
# (the issue's target: at most 1.3), and the PyTorch ratio of each.
# THREADS (default 2), REPEATS (default 3), PRECISIONS (default fp32, so that
# both paths are compared in one precision) and STEPS go to bench_vs_torch.sh.
set -u
cd "$(dirname "$0")/.."
export THREADS=${THREADS:-2} REPEATS=${REPEATS:-3} PRECISIONS=${PRECISIONS:-fp32}
PY=/usr/bin/python3
unet=$(mktemp --suffix=.json)
trap 'rm -f "$unet"' EXIT
sed "s/}\$/,\"image_encoder\":\"unet\",\"unet_channels\":${UNET_CHANNELS:-[64,128]}}/" configs/bench.json >"$unet"
echo "== linear path: configs/bench.json"
lin=$(CFG=configs/bench.json bench/bench_vs_torch.sh | tee /dev/stderr | tail -n 1) || exit 1
echo "== U-Net path: $(cat "$unet")"
un=$(CFG="$unet" bench/bench_vs_torch.sh | tee /dev/stderr | tail -n 1) || exit 1
"$PY" - "$lin" "$un" <<'PYEOF'
import json, sys
lin, un = json.loads(sys.argv[1]), json.loads(sys.argv[2])
cost = un["trainer_best_step_s"] / lin["trainer_best_step_s"]
print(f"U-Net step / linear step (trainer, best threads): {un['trainer_best_step_s']:.4f} / "
      f"{lin['trainer_best_step_s']:.4f} = {cost:.2f} (target <= 1.30)")
print(f"PyTorch / trainer: linear {lin['speedup']:.2f}x, U-Net {un['speedup']:.2f}x")
print(json.dumps({"unet_over_linear": cost, "torch_over_trainer_linear": lin["speedup"],
                  "torch_over_trainer_unet": un["speedup"]}))
PYEOF
