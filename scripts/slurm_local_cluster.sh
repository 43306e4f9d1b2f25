#!/usr/bin/env bash
# A one-node Slurm cluster on localhost for tests (Debian's slurm-wlm + munge), run as the
# current user without systemd or cgroups:
#   scripts/slurm_local_cluster.sh start DIR [OWNER_PID]   # prints `export SLURM_CONF=...`
#   scripts/slurm_local_cluster.sh stop DIR
# Everything lives in DIR: munge key and socket, slurm.conf, state, logs, pid files. Ports are
# picked free at start. With OWNER_PID, a reaper stops the cluster when that process exits, so a
# test killed by a timeout leaves no daemons behind. The node has max(2, nproc) CPUs
# (SlurmdParameters=config_overrides lets it claim more than the hardware for oversubscription).
# Choices that make it run in a container: ProctrackType=proctrack/linuxproc (no cgroups),
# TaskPlugin=task/none, no accounting, SlurmUser = SlurmdUser = the current user.
set -euo pipefail
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR [OWNER_PID]" >&2; exit 2; }

stop_cluster() {
  for name in slurmd slurmctld munged; do
    local pidfile="$dir/$name.pid"
    [ -f "$pidfile" ] || continue
    local pid
    pid=$(cat "$pidfile")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
  # Job steps a killed slurmd left behind (their slurmstepd) would keep CPUs busy.
  if [ -f "$dir/slurm.conf" ]; then
    for pid in $(pgrep -f "slurmstepd: \[" 2>/dev/null || true); do
      if grep -qa "$dir" "/proc/$pid/environ" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
  fi
  if [ -f "$dir/reaper.pid" ]; then
    local reaper
    reaper=$(cat "$dir/reaper.pid")
    [ "$reaper" != "$$" ] && kill "$reaper" 2>/dev/null || true
    rm -f "$dir/reaper.pid"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "$cmd" in
stop)
  stop_cluster
  exit 0
  ;;
start) ;;
*) echo "usage: $0 start|stop DIR [OWNER_PID]" >&2; exit 2 ;;
esac

for tool in munged mungekey slurmctld slurmd sbatch; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found — install Debian's slurm-wlm and munge (make deps)" >&2; exit 1; }
done
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
stop_cluster
rm -rf "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
chmod 711 "$dir" "$dir/munge"
user=$(id -un)
cpus=$(nproc)
[ "$cpus" -ge 2 ] || cpus=2
node=anvilnode

mungekey -c -k "$dir/munge/munge.key" -b 1024 >/dev/null 2>&1 ||
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=128 count=1 status=none
chmod 600 "$dir/munge/munge.key"
munged -f --socket="$dir/munge/munge.sock" --key-file="$dir/munge/munge.key" --pid-file="$dir/munged.pid" \
  --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed"

cat > "$dir/slurm.conf" <<CONF
ClusterName=anviltest
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=$user
SlurmdUser=$user
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.sock
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=30
NodeName=$node NodeHostname=$(hostname) NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF" -N "$node"

if [ -n "${3:-}" ]; then
  owner=$3
  ( trap '' HUP; while kill -0 "$owner" 2>/dev/null; do sleep 2; done; "$0" stop "$dir" ) >/dev/null 2>&1 &
  echo $! > "$dir/reaper.pid"
fi

for _ in $(seq 1 150); do
  if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.2
done
echo "error: the local Slurm node did not become idle in 30 s; logs in $dir/log" >&2
tail -n 20 "$dir/log/"*.log >&2 || true
stop_cluster
exit 1
