#!/usr/bin/env bash
# Tear down the local SLURM that slurm/local/up.sh started in DIR: cancel its jobs, stop exactly
# the daemons whose pid files up.sh left there and, for a cluster of several nodes, remove the
# network namespaces, the bridge and the /etc/hosts lines that DIR/net.env names (nothing else
# on the machine is touched).
#
#   slurm/local/down.sh [DIR] [--purge]   # --purge also removes DIR (config, state, logs)
set -euo pipefail
trap 'echo "slurm/local/down.sh: exit $? at line $LINENO: $BASH_COMMAND" >&2' ERR # say why set -e ends it

DIR=
PURGE=0
for a in "$@"; do
    case $a in
        --purge) PURGE=1 ;;
        *) DIR=$a ;;
    esac
done
DIR=$(realpath -m "${DIR:-${ARTCLF_SLURM_DIR:-/tmp/artclf-slurm}}")
export SLURM_CONF=$DIR/slurm.conf

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
MARK=$DIR/.artclf-local-slurm
[[ -e $MARK ]] || { echo "slurm/local/down.sh: $DIR was not made by slurm/local/up.sh" >&2; exit 1; }

if alive "$DIR/run/slurmctld.pid" && [[ -f $SLURM_CONF ]]; then
    # every job of this cluster is ours; cancelling lets slurmd end their steps properly
    jobs=$(squeue -h -o %A 2>/dev/null || true)
    if [[ -n $jobs ]]; then
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 60); do
            [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break
            sleep 1
        done
        left=$(squeue -h -o %A 2>/dev/null || true)
        [[ -z $left ]] || echo "slurm/local/down.sh: jobs still ending after 60 s: $left" >&2
    fi
fi

stop() { # NAME PIDFILE
    local d=$1 pidfile=$2 pid
    alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    # the pid file may be stale and its number reused: only ever signal our own daemon
    if [[ $(cat "/proc/$pid/comm" 2>/dev/null) != "$d" ]]; then
        echo "slurm/local/down.sh: pid $pid in $pidfile is not $d any more: left alone" >&2
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "$d ($pid) ignored SIGTERM for 10 s: SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    echo "stopped $d ($pid)"
}
shopt -s nullglob
for pidfile in "$DIR"/run/slurmd-*.pid "$DIR"/run/slurmd.pid; do stop slurmd "$pidfile"; done
stop slurmctld "$DIR/run/slurmctld.pid"
stop munged "$DIR/run/munged.pid"

# ---- the network of a cluster of several nodes -----------------------------------------------
if [[ -s $DIR/net.env ]]; then
    # shellcheck disable=SC1091  # written by up.sh
    source "$DIR/net.env"
    mkdir -p /run/lock
    exec 9>>/run/lock/artclf-local-slurm.lock
    flock 9
    for ns in $NETNS; do
        [[ -e /var/run/netns/$ns ]] || continue
        # what a job left running in a node (the jobs were cancelled above): it holds the namespace
        left=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ' || true)
        if [[ -n $left ]]; then
            echo "slurm/local/down.sh: killing what is left in node $ns: pids $left" >&2
            # shellcheck disable=SC2086
            kill -KILL $left 2>/dev/null || true
        fi
        ip netns del "$ns" && echo "removed network namespace $ns"
    done
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link del "$BRIDGE" && echo "removed bridge $BRIDGE ($SUBNET.0/24)"
    fi
    if grep -qF "$HOSTS_MARK" /etc/hosts; then
        # rewritten in place (it may be a bind mount that a rename would not replace)
        kept=$(grep -vF "$HOSTS_MARK" /etc/hosts || true)
        printf '%s\n' "$kept" >/etc/hosts
        echo "removed the /etc/hosts lines of $DIR"
    fi
    flock -u 9
    rm -f "$DIR/net.env"
fi
rm -f "$DIR/nodes" # nothing runs: up.sh may give DIR another number of nodes

if [[ $PURGE == 1 ]]; then
    rm -rf "$DIR"
    echo "removed $DIR"
fi
