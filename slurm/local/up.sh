#!/usr/bin/env bash
# Bring up a real single-node SLURM (slurmctld + slurmd + munged) on this machine, for the tests
# and for trying the sbatch scripts on a laptop or CI box. Needs root; installs Debian's packages
# when they are missing. No systemd: the daemons are started directly, with every file they write
# (config, key, state, logs, pid files) under one folder, so nothing in /etc is touched.
#
#   slurm/local/up.sh [DIR]        # DIR defaults to $ARTCLF_SLURM_DIR or /tmp/artclf-slurm
#   export SLURM_CONF=DIR/slurm.conf   # what sbatch/squeue/scontrol need (the script prints it)
#   slurm/local/down.sh [DIR]      # stops only the daemons this script started
#
# Idempotent: run it again and it checks the running cluster answers instead of starting another.
set -euo pipefail
trap 'echo "slurm/local/up.sh: exit $? at line $LINENO: $BASH_COMMAND" >&2' ERR # say why set -e ends it

DIR=$(realpath -m "${1:-${ARTCLF_SLURM_DIR:-/tmp/artclf-slurm}}")
CTLD_PORT=${ARTCLF_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${ARTCLF_SLURM_SLURMD_PORT:-6818}
CONF=$DIR/slurm.conf

die() { echo "slurm/local/up.sh: $*" >&2; exit 1; }
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

[[ $(id -u) == 0 ]] || die "must run as root (slurmd starts job steps as their users)"

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

if alive "$DIR/run/munged.pid" && alive "$DIR/run/slurmctld.pid" && alive "$DIR/run/slurmd.pid" \
    && scontrol ping >/dev/null 2>&1; then
    echo "local SLURM already up in $DIR"
    echo "export SLURM_CONF=$CONF"
    exit 0
fi

# ---- munge: a key of our own and a socket of our own -----------------------------------------
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

# ---- slurm.conf: the node line is what slurmd detects on this machine --------------------------
NODE_LINE=$(slurmd -C | sed -n 1p) # not head: SIGPIPE (141) under pipefail if slurmd still writes
[[ $NODE_LINE == NodeName=* ]] || die "slurmd -C printed no node line: $NODE_LINE"
NODE=$(sed -E 's/^NodeName=([^ ]+).*/\1/' <<<"$NODE_LINE")
CPUS=$(sed -E 's/.* CPUs=([0-9]+).*/\1/' <<<"$NODE_LINE")
MEM=$(sed -E 's/.* RealMemory=([0-9]+).*/\1/' <<<"$NODE_LINE")
# Every CPU gets an equal share of memory by default, so one job cannot take the whole node.
DEF_MEM_PER_CPU=$((MEM / CPUS))
ADDR=$(getent hosts "$NODE" >/dev/null && echo "$NODE" || echo 127.0.0.1)

cat >"$CONF.tmp" <<EOF
# Written by slurm/local/up.sh: a single-node cluster for tests. Not a production config.
ClusterName=artclf-local
SlurmctldHost=$NODE($ADDR)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
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
# Keep finished jobs visible to scontrol for an hour (tests read their final state there).
MinJobAge=3600
KillWait=30
JobRequeue=1
$NODE_LINE State=UNKNOWN NodeAddr=$ADDR
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
sed -i -E 's/ UpTime=[^ ]*//' "$CONF.tmp"  # slurmd -C also prints the uptime, not a config key
mv "$CONF.tmp" "$CONF"

# ---- daemons ---------------------------------------------------------------------------------
alive "$DIR/run/slurmctld.pid" || slurmctld -f "$CONF" || die "slurmctld did not start: see $DIR/log/slurmctld.log"
alive "$DIR/run/slurmd.pid" || slurmd -f "$CONF" || die "slurmd did not start: see $DIR/log/slurmd.log"

for _ in $(seq 60); do
    state=$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null || true)
    if [[ $state == idle* || $state == mixed* || $state == allocated* ]]; then
        echo "local SLURM up in $DIR: node $NODE ($CPUS CPUs, ${MEM} MiB, DefMemPerCPU=$DEF_MEM_PER_CPU) $state"
        echo "export SLURM_CONF=$CONF"
        exit 0
    fi
    sleep 1
done
die "node $NODE did not become idle (state '${state:-none}'): see $DIR/log/slurmctld.log and $DIR/log/slurmd.log"
