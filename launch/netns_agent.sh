#!/bin/sh
# netns_agent.sh - Open MPI's launcher agent (in place of ssh) for "nodes"
# that are Linux network namespaces of this machine: Open MPI calls it as
# `netns_agent.sh HOST COMMAND...` and it runs COMMAND (an orted daemon's
# command line, written for a remote shell) with `sh -c` inside the
# namespace named HOST, or else the namespace that holds the address HOST.
# NETNS_AGENT_NAMESPACES (space-separated names) limits the namespaces it
# searches, for when several sets of namespaces reuse the same addresses.
# NETNS_AGENT_HOSTNAME=1 runs COMMAND in a UTS namespace of its own whose
# hostname is the network namespace's name: namespaces otherwise share the
# machine's hostname, and with it Open MPI's shared-memory segment names in
# the (shared) /dev/shm, so that two "nodes" collide unless the shared-memory
# transport is left out (`--mca btl tcp,self`). Start mpirun the same way.
# Needs root (ip netns exec). Point Open MPI at it with
#   OMPI_MCA_plm_rsh_agent=/abs/path/launch/netns_agent.sh
# (or `--mca plm_rsh_agent ...`), run mpirun inside the first namespace and
# list the namespaces' addresses in the hostfile; tests/two_nodes.sh does
# this with launch/train.sh, and docs/cluster.md ("Two simulated nodes on
# one machine") explains it.
case ${1:-} in
    -h|--help|'') sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; [ -n "${1:-}" ]; exit ;;
esac
host=$1; shift
ns=""
for n in ${NETNS_AGENT_NAMESPACES:-$(ip netns list | cut -d' ' -f1)}; do
    if [ "$n" = "$host" ] || ip -n "$n" -o addr show 2>/dev/null | grep -qF " $host/"; then
        ns=$n; break
    fi
done
[ -n "$ns" ] || { echo "error: netns_agent.sh: no network namespace is named or holds the address '$host'" >&2; exit 255; }
if [ -n "${NETNS_AGENT_HOSTNAME:-}" ]; then
    exec ip netns exec "$ns" unshare --uts /bin/sh -c 'hostname "$0" && exec /bin/sh -c "$1"' "$ns" "$*"
fi
exec ip netns exec "$ns" /bin/sh -c "$*"
