#!/usr/bin/env bash
# Bring up a real SLURM (slurmctld + slurmd + munged) on this machine, for the tests and for
# trying the sbatch scripts on a laptop or CI box. Needs root; installs Debian's packages when
# they are missing. No systemd: the daemons are started directly, with every file they write
# (config, key, state, logs, pid files) under one folder.
#
#   slurm/local/up.sh [--nodes N] [DIR]  # DIR defaults to $ARTCLF_SLURM_DIR or /tmp/artclf-slurm
#   export SLURM_CONF=DIR/slurm.conf     # what sbatch/squeue/scontrol need (the script prints it)
#   slurm/local/down.sh [DIR]            # stops and removes only what this script made
#
# --nodes 1 (the default): one slurmd for this machine, nothing outside DIR is touched.
# --nodes N >= 2: N "hosts" on this one machine, each a Linux network namespace of its own with
# one slurmd in it (started with nsenter --net: `ip netns exec` remounts /sys, and slurmd then
# dies on the missing cgroup file system). The namespaces hang on a bridge of their own with a
# free /24 of 10.213.0.0/16 (one the machine does not route yet; ARTCLF_SLURM_SUBNET=a.b.c picks
# another), node k at .k, the controller at .254; node names go to /etc/hosts, marked with DIR.
# Jobs on those nodes reach the rest of the machine only at the bridge address (their loopback
# is their own), and set GLOO_SOCKET_IFNAME to the nodes' interface (printed at the end).
# The nodes share this machine's CPUs: each says it has all of them and 1/N of the memory.
#
# Idempotent: run it again and it checks the running cluster answers instead of starting
# another; a daemon that died (a killed node) is started again.
set -euo pipefail
trap 'echo "slurm/local/up.sh: exit $? at line $LINENO: $BASH_COMMAND" >&2' ERR # say why set -e ends it

NNODES=1
DIR=
while (($#)); do
    case $1 in
        --nodes) NNODES=${2:-}; shift 2 || shift ;;
        --nodes=*) NNODES=${1#*=}; shift ;;
        -*) echo "slurm/local/up.sh: unknown option $1 (usage: up.sh [--nodes N] [DIR])" >&2; exit 2 ;;
        *) DIR=$1; shift ;;
    esac
done
DIR=$(realpath -m "${DIR:-${ARTCLF_SLURM_DIR:-/tmp/artclf-slurm}}")
CTLD_PORT=${ARTCLF_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${ARTCLF_SLURM_SLURMD_PORT:-6818}
CONF=$DIR/slurm.conf

die() { echo "slurm/local/up.sh: $*" >&2; exit 1; }
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

[[ $(id -u) == 0 ]] || die "must run as root (slurmd starts job steps as their users)"
[[ $NNODES =~ ^[1-9][0-9]?$ ]] || die "--nodes must be a number from 1 to 99, not '$NNODES'"

# ---- packages --------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || die "slurmctld/slurmd/slurm-client/munge are missing and there is no apt-get"
    echo "installing slurmctld slurmd slurm-client munge (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 slurmctld slurmd slurm-client munge >/dev/null \
        || die "apt-get install slurmctld slurmd slurm-client munge failed"
fi
if ((NNODES > 1)) && { ! command -v ip >/dev/null || ! command -v nsenter >/dev/null; }; then
    die "--nodes $NNODES needs ip (iproute2) and nsenter (util-linux)"
fi

# DIR holds only what this script writes: refuse a folder with other contents (down.sh --purge
# removes DIR, and nothing else may be in it).
MARK=$DIR/.artclf-local-slurm
if [[ -d $DIR && ! -e $MARK && -n $(ls -A "$DIR") ]]; then
    die "$DIR exists, is not empty and was not made by this script: choose another folder"
fi
mkdir -p "$DIR"/{state,spool,log,run}
touch "$MARK"
chmod 0755 "$DIR" # other users may read slurm.conf and submit; the munge key stays 0400
export SLURM_CONF=$CONF

# A folder set up for another number of nodes is not reshaped in place.
if [[ -s $DIR/nodes && $(cat "$DIR/nodes") != "$NNODES" ]]; then
    die "$DIR holds a cluster of $(cat "$DIR/nodes") node(s), not $NNODES: slurm/local/down.sh $DIR --purge first"
fi
echo "$NNODES" >"$DIR/nodes"

# ---- this machine: the node line is what slurmd detects ---------------------------------------
NODE_LINE=$(slurmd -C | sed -n 1p) # not head: SIGPIPE (141) under pipefail if slurmd still writes
NODE_LINE=$(sed -E 's/ UpTime=[^ ]*//' <<<"$NODE_LINE") # the uptime is not a config key
[[ $NODE_LINE == NodeName=* ]] || die "slurmd -C printed no node line: $NODE_LINE"
HOST=$(sed -E 's/^NodeName=([^ ]+).*/\1/' <<<"$NODE_LINE")
CPUS=$(sed -E 's/.* CPUs=([0-9]+).*/\1/' <<<"$NODE_LINE")
MEM=$(sed -E 's/.* RealMemory=([0-9]+).*/\1/' <<<"$NODE_LINE")
NODE_MEM=$((MEM / NNODES))
# Every CPU gets an equal share of memory by default, so one job cannot take the whole node.
DEF_MEM_PER_CPU=$((NODE_MEM / CPUS))

# Node k: its name, its network namespace (>= 2 nodes). ID tells this cluster's from another's:
# drawn at random when DIR is new, kept in DIR for reruns and down.sh. Not a hash of the path: a
# cluster whose folder was deleted without down.sh (a killed test session: pytest numbers its
# folders from 0 again) leaves its namespaces, bridge and daemons running, and a new cluster in
# a folder of the same path must not take them over (its nodes never registered: "Insane
# message length", "Unauthorized credential" in the logs).
if [[ ! -s $DIR/id ]]; then
    od -An -N3 -tx1 /dev/urandom | tr -d ' \n' >"$DIR/id.tmp"
    mv "$DIR/id.tmp" "$DIR/id"
fi
ID=$(cat "$DIR/id")
[[ $ID =~ ^[0-9a-f]{6}$ ]] || die "$DIR/id: '$ID' is not 6 hex digits"
IFACE=artclf0 # the nodes' interface: the same name in every namespace (GLOO_SOCKET_IFNAME)
BRIDGE=artclfbr$ID
HOSTS_MARK="# artclf-local-slurm $DIR" # ends the /etc/hosts lines of this cluster
node_name() { if ((NNODES == 1)); then echo "$HOST"; else echo "artclf-$ID-$1"; fi; }
netns() { echo "artclf-$ID-$1"; }
in_netns() {
    local k=$1
    shift
    nsenter --net="/var/run/netns/$(netns "$k")" "$@"
}

# ---- network: a bridge, and per node a namespace joined to it by a veth pair (>= 2 nodes) ------
subnet_free() { # a.b.c: no route but the default one, no address of the machine, no hosts line
    local routes
    routes=$(ip -4 -o route show to match "$1.1" | grep -v '^default' || true)
    [[ -z $routes ]] && ! ip -4 -o addr show | grep -qF " $1." \
        && ! grep -qE "^$1\.[0-9]+[[:space:]]" /etc/hosts
}

network_up() {
    # one lock for every cluster on the machine: the subnet choice and /etc/hosts
    mkdir -p /run/lock
    exec 9>>/run/lock/artclf-local-slurm.lock
    flock 9
    local k ns veth line
    if [[ -s $DIR/net.env ]]; then
        # shellcheck disable=SC1091  # written below
        source "$DIR/net.env" # a rerun keeps its subnet: slurm.conf must not change under slurmctld
    else
        if [[ -n ${ARTCLF_SLURM_SUBNET:-} ]]; then
            SUBNET=$ARTCLF_SLURM_SUBNET
            [[ $SUBNET =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "ARTCLF_SLURM_SUBNET=$SUBNET: want a.b.c (a /24)"
            subnet_free "$SUBNET" || die "ARTCLF_SLURM_SUBNET=$SUBNET: $SUBNET.0/24 is routed or used on this machine"
        else
            SUBNET=
            for k in $(seq 0 255); do
                if subnet_free "10.213.$k"; then
                    SUBNET=10.213.$k
                    break
                fi
            done
            [[ -n $SUBNET ]] || die "no free /24 in 10.213.0.0/16: set ARTCLF_SLURM_SUBNET=a.b.c"
        fi
        # what down.sh removes; written before anything is made, so that a half-made network goes too
        {
            echo "SUBNET=$SUBNET"
            echo "BRIDGE=$BRIDGE"
            echo "NETNS=\"$(for k in $(seq "$NNODES"); do netns "$k"; done | tr '\n' ' ')\""
            echo "HOSTS_MARK=\"$HOSTS_MARK\""
        } >"$DIR/net.env.tmp"
        mv "$DIR/net.env.tmp" "$DIR/net.env"
    fi
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
        ip addr add "$SUBNET.254/24" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
    for k in $(seq "$NNODES"); do
        ns=$(netns "$k")
        veth=artclfv$ID$k
        [[ -e /var/run/netns/$ns ]] || ip netns add "$ns"
        if ! ip link show "$veth" >/dev/null 2>&1; then
            ip link add "$veth" type veth peer name "artclfp$ID$k"
            ip link set "artclfp$ID$k" netns "$ns"
            in_netns "$k" ip link set "artclfp$ID$k" name "$IFACE"
            in_netns "$k" ip addr add "$SUBNET.$k/24" dev "$IFACE"
        fi
        ip link set "$veth" master "$BRIDGE"
        ip link set "$veth" up
        in_netns "$k" ip link set "$IFACE" up
        in_netns "$k" ip link set lo up
        # the node's name resolves for every process (the file system is shared); appended, so
        # that a reader never sees /etc/hosts half written
        line="$SUBNET.$k $(node_name "$k") $HOSTS_MARK"
        grep -qxF "$line" /etc/hosts || echo "$line" >>/etc/hosts
    done
    flock -u 9
}

if ((NNODES > 1)); then
    network_up
    CTLD_ADDR=$SUBNET.254
else
    CTLD_ADDR=$(getent hosts "$HOST" >/dev/null && echo "$HOST" || echo 127.0.0.1)
fi

# ---- munge: a key of our own and a socket of our own (a file: every namespace reaches it) ------
if [[ ! -s $DIR/munge.key ]]; then
    dd if=/dev/urandom of="$DIR/munge.key.tmp" bs=1024 count=1 status=none
    chmod 0400 "$DIR/munge.key.tmp"
    mv "$DIR/munge.key.tmp" "$DIR/munge.key"
fi
SOCKET=$DIR/run/munge.socket
if ! alive "$DIR/run/munged.pid"; then
    # --force: munged refuses to run as root or with a socket outside /run/munge otherwise
    munged --force --socket="$SOCKET" --key-file="$DIR/munge.key" --pid-file="$DIR/run/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/state/munged.seed" \
        || die "munged did not start: see $DIR/log/munged.log"
fi

# ---- slurm.conf ------------------------------------------------------------------------------
node_lines() {
    local k addr
    for k in $(seq "$NNODES"); do
        addr=$CTLD_ADDR
        ((NNODES == 1)) || addr=$SUBNET.$k
        sed -E "s/^NodeName=[^ ]+/NodeName=$(node_name "$k")/; s/ RealMemory=[0-9]+/ RealMemory=$NODE_MEM/" \
            <<<"$NODE_LINE State=UNKNOWN NodeAddr=$addr"
    done
}
if ((NNODES == 1)); then NODES=$HOST; else NODES="artclf-$ID-[1-$NNODES]"; fi

cat >"$CONF.tmp" <<CONF
# Written by slurm/local/up.sh: a $NNODES-node cluster for tests. Not a production config.
ClusterName=artclf-local
# slurmctld checks that the name is its own host's; the address is where the nodes reach it
SlurmctldHost=$HOST($CTLD_ADDR)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in a container: track processes by parent pid, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU
ReturnToService=2
# A node whose slurmd is gone (the tests kill one) is DOWN after 30 s, not the default 300.
SlurmdTimeout=30
# Keep finished jobs visible to scontrol for an hour (tests read their final state there).
MinJobAge=3600
KillWait=30
JobRequeue=1
$(node_lines)
PartitionName=debug Nodes=$NODES Default=YES MaxTime=INFINITE State=UP
CONF
mv "$CONF.tmp" "$CONF"

say_up() {
    echo "local SLURM up in $DIR: $*"
    echo "export SLURM_CONF=$CONF"
    if ((NNODES > 1)); then
        echo "export GLOO_SOCKET_IFNAME=$IFACE  # the nodes' interface, for the jobs (sbatch passes it on)"
    fi
}

all_alive() {
    alive "$DIR/run/munged.pid" && alive "$DIR/run/slurmctld.pid" || return 1
    local k
    for k in $(seq "$NNODES"); do alive "$DIR/run/slurmd-$(node_name "$k").pid" || return 1; done
}
if all_alive && scontrol ping >/dev/null 2>&1; then
    say_up "already running ($NODES)"
    exit 0
fi

# ---- daemons ---------------------------------------------------------------------------------
alive "$DIR/run/slurmctld.pid" || slurmctld -f "$CONF" || die "slurmctld did not start: see $DIR/log/slurmctld.log"
for k in $(seq "$NNODES"); do
    name=$(node_name "$k")
    alive "$DIR/run/slurmd-$name.pid" && continue
    mkdir -p "$DIR/spool/$name"
    if ((NNODES == 1)); then
        slurmd -f "$CONF" -N "$name" || die "slurmd did not start: see $DIR/log/slurmd-$name.log"
    else
        in_netns "$k" slurmd -f "$CONF" -N "$name" || die "slurmd $name did not start: see $DIR/log/slurmd-$name.log"
    fi
done

states=
for _ in $(seq 60); do
    states=$(sinfo -h -N -o '%N=%T' 2>/dev/null | sort -u | tr '\n' ' ' || true)
    if [[ -n $states ]] && ! tr ' ' '\n' <<<"$states" | grep -qvE '^$|=(idle|mixed|allocated)'; then
        if ((NNODES == 1)); then
            say_up "node $HOST ($CPUS CPUs, ${MEM} MiB, DefMemPerCPU=$DEF_MEM_PER_CPU) ${states#*=}"
        else
            say_up "$NNODES nodes $NODES at $SUBNET.1-$NNODES on bridge $BRIDGE, each $CPUS CPUs" \
                "(shared) and $NODE_MEM MiB, DefMemPerCPU=$DEF_MEM_PER_CPU: $states"
        fi
        exit 0
    fi
    sleep 1
done
die "nodes not idle after 60 s (${states:-no answer from sinfo}): see $DIR/log/slurmctld.log and $DIR/log/slurmd-*.log"
