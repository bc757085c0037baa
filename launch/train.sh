#!/usr/bin/env bash
# train.sh - one training job: starts the dataloader service, waits until it
# answers, runs the trainer ranks under mpirun against it, and stops the
# loader when training ends. Ctrl-C (or SIGTERM to this script) asks the ranks
# to finish their step and save (SIGUSR1, which mpirun forwards to every
# rank), waits for them, then stops the loader.
#
# One machine (the loaders on free loopback ports):
#   launch/train.sh --ranks N [--loaders K] --text TEXT_DIR --latents LATENT_DIR --tokenizer TOK.model \
#       [--loader-args "..."] [--restarts R] -- TRAINER_TRAIN_ARGS...
#   --loaders K runs K loader replicas; every rank asks all of them, and
#   when one dies its ranks move to the others.
# A cluster (one loader per node on 127.0.0.1:PORT, every rank talks to its
# own node's loader; every loader serves any rank, so they are replicas):
#   launch/train.sh --hostfile HOSTS --ranks-per-node K [--port 5555] --text ... -- ...
#   (inside a Slurm allocation, leave out --hostfile: mpirun takes the nodes
#   from Slurm; see launch/slurm.sbatch)
#
# --restarts R (default 0) rides through crashes: a loader that exits is
# started again on its endpoint, and a trainer job that fails (a rank killed,
# a node lost; not exit 2, bad input) is started again with --resume auto,
# up to R restarts in all. It needs --ckpt-dir among the trainer's flags.
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
ranks=2 loaders=1 restarts=0 per_node="" hostfile="" port=5555 text="" latents="" tok="" loader_args=""
while [ $# -gt 0 ]; do
    case $1 in
        --ranks) ranks=$2; shift 2 ;;
        --loaders) loaders=$2; shift 2 ;;
        --restarts) restarts=$2; shift 2 ;;
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
usage_error() { echo "error: train.sh: $*" >&2; exit 2; }
[ -n "$text" ] && [ -n "$tok" ] || usage_error "--text and --tokenizer are required"
[[ "$loaders" =~ ^[1-9][0-9]*$ ]] || usage_error "--loaders $loaders: not an integer >= 1"
[[ "$restarts" =~ ^[0-9]+$ ]] || usage_error "--restarts $restarts: not an integer >= 0"
[ "$loaders" -eq 1 ] || [ -z "$per_node" ] || usage_error "--loaders is for one machine (a cluster runs one loader per node)"
[ "$restarts" -eq 0 ] || [[ " $* " == *" --ckpt-dir "* ]] ||
    usage_error "--restarts needs --ckpt-dir among the trainer's flags (a restart resumes from it)"
MPI=(mpirun --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}")
[ -n "$hostfile" ] && MPI+=(--hostfile "$hostfile")
serve=("$BIN/dataloader" serve --text "$(realpath "$text")" --tokenizer "$(realpath "$tok")")
[ -n "$latents" ] && serve+=(--latents "$(realpath "$latents")")
# shellcheck disable=SC2206  # loader_args is a list of flags
serve+=($loader_args)
[ -n "$per_node" ] && serve=("${MPI[@]}" --map-by ppr:1:node "${serve[@]}")

log=$(mktemp -d)
trainers="" supervisors=""
cleanup() { # under set -e: every step may fail (a process already gone)
    [ -n "$trainers" ] && kill -KILL "$trainers" 2>/dev/null || true
    touch "$log/stopping"
    for f in "$log"/loader*.pid; do kill -TERM "$(cat "$f" 2>/dev/null)" 2>/dev/null || true; done
    for p in $supervisors; do wait "$p" 2>/dev/null || true; done
    rm -rf "$log"
}
trap cleanup EXIT

# One restart out of the --restarts budget, which the loaders' supervisors
# and the trainer loop share (a lock, as they are separate processes).
take_restart() {
    local n
    exec {lock}>>"$log/restarts.lock"
    flock "$lock"
    n=$(($(cat "$log/restarts" 2>/dev/null || echo 0) + 1))
    [ "$n" -le "$restarts" ] && echo "$n" >"$log/restarts"
    flock -u "$lock"; exec {lock}>&-
    if [ "$n" -gt "$restarts" ]; then echo "train.sh: $1; no restarts left (--restarts $restarts)" >&2; return 1; fi
    echo "train.sh: restart $n/$restarts: $1" >&2
}

# Loader k, kept serving: run in the background. A restart binds the
# endpoint the first start resolved, which the ranks keep asking.
keep_serving() {
    local k=$1 ep=$2 rc
    while :; do
        "${serve[@]}" --endpoint "$ep" >>"$log/loader$k.out" 2>>"$log/loader$k.err" &
        echo $! >"$log/loader$k.pid"
        wait $! && rc=0 || rc=$?
        [ -e "$log/stopping" ] && return
        ep=$(sed -n 's/^serving on \([^ ]*\) .*/\1/p' "$log/loader$k.out" | head -n 1)
        [ -n "$ep" ] || [ -n "$per_node" ] || return 0  # it never served: the start below reports it
        [ -n "$ep" ] || ep="tcp://127.0.0.1:$port"
        take_restart "dataloader $k exited ($rc)" || return 0
    done
}

eps=""
if [ -z "$per_node" ]; then                 # one machine
    for k in $(seq "$loaders"); do
        keep_serving "$k" 'tcp://127.0.0.1:*' &
        supervisors="$supervisors $!"
    done
    for k in $(seq "$loaders"); do
        ep=""
        for _ in $(seq 600); do              # the loader reads its datasets first
            ep=$(sed -n 's/^serving on \([^ ]*\) .*/\1/p' "$log/loader$k.out" 2>/dev/null | head -n 1)
            [ -n "$ep" ] && break
            [ -e "$log/loader$k.pid" ] && ! kill -0 "$(cat "$log/loader$k.pid")" 2>/dev/null &&
                { cat "$log/loader$k.err" >&2; exit 2; }
            sleep 0.1
        done
        [ -n "$ep" ] || { echo "error: dataloader $k did not start within 60 s" >&2; exit 1; }
        "$BIN/dataloader" inspect --endpoint "$ep" --step 0 --world 1 >/dev/null ||
            { echo "error: the dataloader at $ep does not answer" >&2; exit 1; }
        eps="${eps:+$eps,}$ep"
    done
    placement=(-np "$ranks")
else                                        # one loader per node
    eps="tcp://127.0.0.1:$port"
    keep_serving 1 "$eps" &
    supervisors=$!
    for _ in $(seq 600); do
        "${MPI[@]}" --map-by ppr:1:node "$BIN/dataloader" inspect --endpoint "$eps" --step 0 --world 1 \
            >/dev/null 2>&1 && break
        [ -e "$log/loader1.pid" ] && ! kill -0 "$(cat "$log/loader1.pid")" 2>/dev/null &&
            { cat "$log/loader1.err" >&2; exit 2; }
        sleep 1
    done
    placement=(--map-by "ppr:$per_node:node")
fi
echo "train.sh: dataloader on $eps"

stopping=0
stop() { stopping=1; touch "$log/stopping"; echo "train.sh: stopping: the trainers finish their step and save" >&2; kill -USR1 "$trainers" 2>/dev/null || true; }
trap stop INT TERM
args=("$@")
while :; do
    "${MPI[@]}" "${placement[@]}" "$BIN/trainer" train --loader "$eps" "${args[@]}" &
    trainers=$!
    while :; do
        wait "$trainers" && rc=0 || rc=$?
        kill -0 "$trainers" 2>/dev/null || break   # a trapped signal ends `wait` early
    done
    trainers=""
    [ $rc -eq 0 ] || [ $rc -eq 2 ] || [ $stopping -eq 1 ] && break
    take_restart "the trainers exited ($rc)" || break
    args=()                                  # again, from the newest good checkpoint
    while [ $# -gt 0 ]; do case $1 in --resume) shift 2 ;; *) args+=("$1"); shift ;; esac; done
    args+=(--resume auto)
    set -- "${args[@]}"
done
[ $stopping -eq 1 ] && echo "train.sh: the trainers stopped (exit $rc)" >&2
exit $rc
