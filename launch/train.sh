#!/usr/bin/env bash
# train.sh - one training job: starts the dataloader service, waits until it
# answers, runs the trainer ranks under mpirun against it, and stops the
# loader when training ends. Ctrl-C (or SIGTERM to this script) asks the ranks
# to finish their step and save (SIGUSR1, which mpirun forwards to every
# rank), waits for them, then stops the loader.
#
# One machine (the loader on a free loopback port):
#   launch/train.sh --ranks N --text TEXT_DIR --latents LATENT_DIR --tokenizer TOK.model \
#       [--loader-args "..."] -- TRAINER_TRAIN_ARGS...
# A cluster (one loader per node on 127.0.0.1:PORT, every rank talks to its
# own node's loader; every loader serves any rank, so they are replicas):
#   launch/train.sh --hostfile HOSTS --ranks-per-node K [--port 5555] --text ... -- ...
#   (inside a Slurm allocation, leave out --hostfile: mpirun takes the nodes
#   from Slurm; see launch/slurm.sbatch)
#
# TRAINER_TRAIN_ARGS go to `trainer train` (--config, --steps, --ckpt-dir,
# --resume auto, ...); --loader is added. The data paths, the binaries and
# --ckpt-dir must be the same on every node (a shared file system). Each rank
# runs OMP_NUM_THREADS threads (default 1).
. "$(dirname "$0")/help.sh"
script_help "$@"
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${BIN:-bin}")
ranks=2 per_node="" hostfile="" port=5555 text="" latents="" tok="" loader_args=""
while [ $# -gt 0 ]; do
    case $1 in
        --ranks) ranks=$2; shift 2 ;;
        --ranks-per-node) per_node=$2; shift 2 ;;
        --hostfile) hostfile=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        --text) text=$2; shift 2 ;;
        --latents) latents=$2; shift 2 ;;
        --tokenizer) tok=$2; shift 2 ;;
        --loader-args) loader_args=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "error: train.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
[ -n "$text" ] && [ -n "$tok" ] || { echo "error: train.sh: --text and --tokenizer are required" >&2; exit 2; }
MPI=(mpirun --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}")
[ -n "$hostfile" ] && MPI+=(--hostfile "$hostfile")
serve=("$BIN/dataloader" serve --text "$(realpath "$text")" --tokenizer "$(realpath "$tok")")
[ -n "$latents" ] && serve+=(--latents "$(realpath "$latents")")
# shellcheck disable=SC2206  # loader_args is a list of flags
serve+=($loader_args)

log=$(mktemp -d)
loader=""; trainers=""
cleanup() {
    [ -n "$trainers" ] && kill -0 "$trainers" 2>/dev/null && kill -KILL "$trainers" 2>/dev/null
    [ -n "$loader" ] && kill -TERM "$loader" 2>/dev/null && wait "$loader" 2>/dev/null || true  # mpirun exits 1 on SIGTERM
    rm -rf "$log"
}
trap cleanup EXIT

if [ -z "$per_node" ]; then                 # one machine
    "${serve[@]}" --endpoint 'tcp://127.0.0.1:*' >"$log/loader.out" 2>"$log/loader.err" &
    loader=$!
    ep=""
    for _ in $(seq 600); do                  # the loader reads its datasets first
        ep=$(sed -n 's/^serving on \([^ ]*\) .*/\1/p' "$log/loader.out")
        [ -n "$ep" ] && break
        kill -0 $loader 2>/dev/null || { cat "$log/loader.err" >&2; exit 2; }
        sleep 0.1
    done
    [ -n "$ep" ] || { echo "error: the dataloader did not start within 60 s" >&2; exit 1; }
    "$BIN/dataloader" inspect --endpoint "$ep" --step 0 --world 1 >/dev/null ||
        { echo "error: the dataloader at $ep does not answer" >&2; exit 1; }
    placement=(-np "$ranks")
else                                        # one loader per node
    ep="tcp://127.0.0.1:$port"
    "${MPI[@]}" --map-by ppr:1:node "${serve[@]}" --endpoint "$ep" >"$log/loader.out" 2>"$log/loader.err" &
    loader=$!
    for _ in $(seq 600); do
        "${MPI[@]}" --map-by ppr:1:node "$BIN/dataloader" inspect --endpoint "$ep" --step 0 --world 1 \
            >/dev/null 2>&1 && break
        kill -0 $loader 2>/dev/null || { cat "$log/loader.err" >&2; exit 2; }
        sleep 1
    done
    placement=(--map-by "ppr:$per_node:node")
fi
echo "train.sh: dataloader on $ep"

stopping=0
stop() { stopping=1; echo "train.sh: stopping: the trainers finish their step and save" >&2; kill -USR1 "$trainers" 2>/dev/null || true; }
trap stop INT TERM
"${MPI[@]}" "${placement[@]}" "$BIN/trainer" train --loader "$ep" "$@" &
trainers=$!
rc=0
while :; do
    wait "$trainers" && rc=0 || rc=$?
    kill -0 "$trainers" 2>/dev/null || break   # a trapped signal ends `wait` early
done
trainers=""
[ $stopping -eq 1 ] && echo "train.sh: the trainers stopped (exit $rc)" >&2
exit $rc
