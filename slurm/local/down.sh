#!/usr/bin/env bash
# Tear down the local SLURM that slurm/local/up.sh started in DIR: cancel its jobs, then stop
# exactly the daemons whose pid files up.sh left there (nothing else on the machine is touched).
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

for d in slurmd slurmctld munged; do
    pidfile=$DIR/run/$d.pid
    alive "$pidfile" || { rm -f "$pidfile"; continue; }
    pid=$(cat "$pidfile")
    # the pid file may be stale and its number reused: only ever signal our own daemon
    if [[ $(cat "/proc/$pid/comm" 2>/dev/null) != "$d" ]]; then
        echo "slurm/local/down.sh: pid $pid in $pidfile is not $d any more: left alone" >&2
        rm -f "$pidfile"
        continue
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
done

if [[ $PURGE == 1 ]]; then
    rm -rf "$DIR"
    echo "removed $DIR"
fi
