#!/usr/bin/env bash
# two_nodes.sh - two simulated nodes on one machine: two network namespaces
# joined by a veth pair (10.77.0.1/24 and 10.77.0.2/24), each with its own
# loopback and so its own dataloader on 127.0.0.1:PORT, and one training job
# across both through launch/train.sh's hostfile path. mpirun runs in the
# first namespace; Open MPI reaches the second through launch/netns_agent.sh
# (its launcher agent in place of ssh), and its control (oob) and MPI (btl
# tcp, no shared memory) traffic is held to the veth subnet. Checks: the
# loaders and K ranks ran in each namespace, the veth carried at least the
# gradient's bytes x steps each way, and the losses and final weights equal
# those of a one-namespace run of the same world size (shared memory).
# Not part of `make test`: it needs root and `ip netns`.
#   tests/two_nodes.sh     (RANKS_PER_NODE=2 STEPS=20 PORT=5555 HIDDEN=64
#                           LAYERS=2 BTL=tcp,self by default; KEEP=1 keeps its temp folder)
# HOSTNAMES=1 gives each node a hostname of its own (a UTS namespace) and
# leaves the transports to Open MPI (shared memory within a node, TCP across):
# with one hostname, the nodes' shared-memory segments collide in /dev/shm.
set -u
cd "$(dirname "$0")/.." || exit 2
BIN=${BIN:-bin}
PY=/usr/bin/python3
. tests/check.sh
export BIN OMP_NUM_THREADS=1
K=${RANKS_PER_NODE:-2} STEPS=${STEPS:-20} PORT=${PORT:-5555}
[ "$(id -u)" -eq 0 ] || { echo "error: two_nodes.sh needs root (ip netns)" >&2; exit 2; }
DL=$(realpath "$BIN/dataloader") TR=$(realpath "$BIN/trainer")
N1=tfn1-$$ N2=tfn2-$$ V1=tfa$$ V2=tfb$$        # unique: other copies may run beside this one
t=$(mktemp -d)
run="" w1="" w2=""
cleanup() {
    [ -n "$w1$w2" ] && kill $w1 $w2 2>/dev/null
    if [ -n "$run" ] && kill -TERM "$run" 2>/dev/null; then   # train.sh: the ranks save and stop
        for _ in $(seq 50); do kill -0 "$run" 2>/dev/null || break; sleep 0.2; done
    fi
    for ns in "$N1" "$N2"; do                 # whatever is left in our namespaces is ours
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    ip link del "$V1" 2>/dev/null              # only if it never moved into a namespace
    if [ -n "${KEEP:-}" ]; then echo "kept $t"; else rm -rf "$t"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# The two nodes. Deleting a namespace deletes its end of the veth, and the pair with it.
ip netns add "$N1" && ip netns add "$N2" &&
ip link add "$V1" type veth peer name "$V2" &&
ip link set "$V1" netns "$N1" && ip link set "$V2" netns "$N2" &&
ip -n "$N1" addr add 10.77.0.1/24 dev "$V1" && ip -n "$N2" addr add 10.77.0.2/24 dev "$V2" &&
ip -n "$N1" link set lo up && ip -n "$N2" link set lo up &&
ip -n "$N1" link set "$V1" up && ip -n "$N2" link set "$V2" up
check "two namespaces joined by a veth pair" [ $? -eq 0 ]
ip netns exec "$N2" $PY -c 'import socket,sys; s=socket.socket(); s.settimeout(10); s.bind(("10.77.0.2",7777)); s.listen(); c,_=s.accept(); c.send(c.recv(2))' &
for _ in $(seq 50); do
    reply=$(ip netns exec "$N1" $PY -c 'import socket; s=socket.create_connection(("10.77.0.2",7777),1); s.send(b"hi"); print(s.recv(2).decode())' 2>/dev/null) && break
    sleep 0.1
done
wait
check "node 1 reaches node 2 over the veth" [ "$reply" = hi ]

# Data (tests/loader_data.sh): a text corpus, its tokenizer and tokens, and
# latents of a random VAE; a tiny model.
BIN="$BIN" tests/loader_data.sh "$t"
check "the test data is built ($?)" [ $? -eq 0 ]
printf '{"hidden_size":%d,"num_hidden_layers":%d,"num_attention_heads":4,"intermediate_size":%d,"max_image_patches":16}\n' \
    "${HIDDEN:-64}" "${LAYERS:-2}" "$((${HIDDEN:-64} * 2))" >"$t/model.json"
data=(--text "$t/text" --latents "$t/lat" --tokenizer "$t/tok.model" --loader-args "--patch-size 2 --rows-per-rank 2 --seq-len 128")
args=(--config "$t/model.json" --lr 3e-3 --warmup 2 --threads 1 --log-every 1 --steps "$STEPS")

veth() { ip netns exec "$N1" cat "/sys/class/net/$V1/statistics/$1"; }
# Which of our programs run in a namespace: writes "DATALOADERS TRAINERS", the most seen at once.
watch_ns() {
    local most_d=0 most_t=0 d n p
    while [ -d "$t" ] && [ ! -e "$t/stop_watch" ]; do
        d=0 n=0
        for p in $(ip netns pids "$1" 2>/dev/null); do
            case $(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline") in
                "$DL serve "*) d=$((d + 1)) ;; "$TR train "*) n=$((n + 1)) ;;     # not mpirun's own command line
            esac
        done
        [ $d -gt $most_d ] && most_d=$d
        [ $n -gt $most_t ] && most_t=$n
        sleep 0.2
    done
    echo "$most_d $most_t" >"$t/seen.$1"
}

# The two-node run: mpirun in namespace 1, the hostfile naming both nodes by address.
printf '10.77.0.1 slots=%d\n10.77.0.2 slots=%d\n' "$K" "$K" >"$t/hosts"
rm -f "$t/stop_watch"; watch_ns "$N1" & w1=$!; watch_ns "$N2" & w2=$!
tx0=$(veth tx_bytes) rx0=$(veth rx_bytes)
start=$(date +%s.%N)
btl=(OMPI_MCA_btl="${BTL:-tcp,self}") in_ns1=(ip netns exec "$N1")
if [ -n "${HOSTNAMES:-}" ]; then              # each node its own hostname, Open MPI's default transports
    btl=(NETNS_AGENT_HOSTNAME=1) in_ns1+=(unshare --uts sh -c 'hostname "$0" && exec "$@"' "$N1")
    [ -n "${BTL:-}" ] && btl+=(OMPI_MCA_btl="$BTL")
fi
"${in_ns1[@]}" env "${btl[@]}" \
    OMPI_MCA_plm_rsh_agent="$PWD/launch/netns_agent.sh" NETNS_AGENT_NAMESPACES="$N1 $N2" \
    OMPI_MCA_oob_tcp_if_include=10.77.0.0/24 OMPI_MCA_btl_tcp_if_include=10.77.0.0/24 \
    launch/train.sh --hostfile "$t/hosts" --ranks-per-node "$K" --port "$PORT" "${data[@]}" -- "${args[@]}" \
    --ckpt-dir "$t/two" >"$t/two.log" 2>&1 &
run=$!; wait $run; rc=$?; run=""
wall=$(echo "$(date +%s.%N) - $start" | bc)
tx=$(( $(veth tx_bytes) - tx0 )) rx=$(( $(veth rx_bytes) - rx0 ))
touch "$t/stop_watch"; wait $w1 $w2; w1="" w2=""
check "two nodes: launch/train.sh --hostfile runs $STEPS steps on 2 x $K ranks (exit $rc)" \
    sh -c "[ $rc -eq 0 ] && grep -q '^step *$STEPS/$STEPS' '$t/two.log'"
[ $rc -eq 0 ] || tail -n 20 "$t/two.log" | sed 's/^/    | /'
read -r d1 t1 <"$t/seen.$N1"; read -r d2 t2 <"$t/seen.$N2"
check "two nodes: a loader and $K ranks in each namespace (node 1: $d1 and $t1, node 2: $d2 and $t2)" \
    [ "$d1" -eq 1 -a "$d2" -eq 1 -a "$t1" -eq "$K" -a "$t2" -eq "$K" ]

# The gradient's bytes: every float32 parameter, from the checkpoint's index.
ck=$(ls -d "$t"/two/step_* 2>/dev/null | tail -n 1)
grad=$($PY - "$ck" <<'PYEOF' 2>/dev/null || echo 0
import json, struct, sys, glob, os
n = 0
idx = json.load(open(os.path.join(sys.argv[1], "model.safetensors.index.json")))
for f in sorted(set(idx["weight_map"].values())):
    with open(os.path.join(sys.argv[1], f), "rb") as h:
        hdr = json.loads(h.read(struct.unpack("<Q", h.read(8))[0]))
    n += sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in hdr.items() if k != "__metadata__")
print(n)
PYEOF
)
need=$((grad * STEPS))
check "two nodes: the veth carried the gradient x steps each way (sent $tx, received $rx bytes; gradient $grad bytes x $STEPS = $need)" \
    [ "$grad" -gt 0 -a "$tx" -ge "$need" -a "$rx" -ge "$need" ]

# The same job in one namespace: one loader, 2K ranks, Open MPI's defaults (shared memory).
tx0=$(veth tx_bytes)
start=$(date +%s.%N)
ip netns exec "$N1" launch/train.sh --ranks $((2 * K)) "${data[@]}" -- "${args[@]}" --ckpt-dir "$t/one" >"$t/one.log" 2>&1
rc=$?
wall1=$(echo "$(date +%s.%N) - $start" | bc)
tx1=$(( $(veth tx_bytes) - tx0 ))
check "one namespace: $((2 * K)) ranks run $STEPS steps (exit $rc; $tx1 bytes over the veth)" \
    sh -c "[ $rc -eq 0 ] && grep -q '^step *$STEPS/$STEPS' '$t/one.log'"
losses() { $PY -c 'import json,sys; [print(json.loads(l)["step"], repr(json.loads(l)["loss"])) for l in open(sys.argv[1])]' "$1"; }
check "the $STEPS losses are bitwise those of the one-namespace run" diff <(losses "$t/two/metrics.jsonl") <(losses "$t/one/metrics.jsonl")
same=1 files=0
for f in "$ck"/*.safetensors; do
    cmp -s "$f" "$t/one/$(basename "$ck")/$(basename "$f")" || { same=0; echo "    differs: $(basename "$f")"; }
    files=$((files + 1))
done
check "the final checkpoint's $files tensor files (weights, optimizer parts) are bitwise the one-namespace run's" [ $same -eq 1 -a $files -gt 0 ]
# the trainer's own time: the last field of its last step line
took() { sed -n "s/^step *$STEPS\/$STEPS .* \([0-9.]*\) s$/\1/p" "$1" | tail -n 1; }
echo "figures: 2 nodes x $K ranks, $STEPS steps of $((grad / 4)) parameters: train.sh $(printf %.1f "$wall") s, training $(took "$t/two.log") s" \
     "(one namespace: $(printf %.1f "$wall1") s and $(took "$t/one.log") s); veth $tx bytes sent and $rx received" \
     "($((tx / STEPS)) and $((rx / STEPS)) a step, the gradient $grad bytes)"
[ $fails -eq 0 ]
