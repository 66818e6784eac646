#!/usr/bin/env bash
# Start a one-node Slurm cluster (munged + slurmctld + slurmd on this host) for tests/test_slurm.py.
#
# Run as root by .ci/run before `make test`; no systemd needed. Idempotent: when the daemons it
# started earlier are still alive and the node answers, it does nothing.
#
#   bash .ci/services/slurm.sh          start (what .ci/run does; it runs every .ci/services/*.sh)
#   bash .ci/services/slurm.sh stop     stop exactly the PIDs recorded in $NHT_SLURM_DIR/pids
#   bash .ci/services/slurm.sh status   exit 0 when the recorded daemons live and the node is up
#
# (stop is a subcommand rather than a separate *.sh because .ci/run executes every *.sh here.)
#
#   NHT_SLURM_DIR   state, spool, logs and the PID file      (default /tmp/nht-slurm)
#   SLURM_CONF      slurm.conf written here                   (default /etc/slurm/slurm.conf, the
#                   path Debian's sbatch/squeue/sinfo read, so no environment is needed by clients)
#
# Debian 12 ships Slurm 22.05: proctrack/linuxproc + task/none avoid cgroups, select/cons_tres with
# CR_Core_Memory schedules by core and memory; no slurmdbd, so the profile queries status with squeue.
set -euo pipefail

NHT_SLURM_DIR=${NHT_SLURM_DIR:-/tmp/nht-slurm}
SLURM_CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
MARK="# managed by nht .ci/services/slurm.sh"
PIDS="$NHT_SLURM_DIR/pids"

log() { echo "[slurm.sh] $*"; }
die() { echo "[slurm.sh] ERROR: $*" >&2; exit 1; }

ours() {  # ours NAME PID: PID is alive and is still that daemon (guards against PID reuse)
  [ -n "${2:-}" ] && kill -0 "$2" 2>/dev/null && [ "$(cat "/proc/$2/comm" 2>/dev/null)" = "$1" ]
}

stop() {
  # reverse order of start: slurmd, slurmctld, munged; TERM, then KILL after 10 s
  [ -s "$PIDS" ] || { log "nothing recorded in $PIDS"; return 0; }
  local name pid
  while read -r name pid; do
    [ -n "${pid:-}" ] || continue
    if ours "$name" "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; log "$name ($pid) killed"
      else log "$name ($pid) stopped"; fi
    else
      log "$name ($pid) was not running (or the PID now belongs to another program: left alone)"
    fi
  done < <(tac "$PIDS")
  rm -f "$PIDS"
}

node_idle() {
  # true when our node is up and schedulable (idle, or already running something: mixed/allocated)
  local st
  st=$(timeout 10 sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -1) || return 1
  case "$st" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac
}

NODE=$(hostname -s)

all_alive() {
  [ -s "$PIDS" ] || return 1
  local name pid ok=0
  while read -r name pid; do
    ours "$name" "$pid" || { log "$name ($pid) is gone"; ok=1; }
  done <"$PIDS"
  return $ok
}

case "${1:-start}" in
  start) ;;
  stop) stop; exit 0 ;;
  status) command -v sinfo >/dev/null && all_alive && node_idle && { log "running"; exit 0; }; log "not running"; exit 1 ;;
  *) die "usage: $0 [start|stop|status]" ;;
esac

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"

# ---- 0. already running? ----------------------------------------------------------------------
if [ -s "$PIDS" ]; then
  if command -v sinfo >/dev/null && all_alive && node_idle; then
    log "already running (node $NODE up; PIDs in $PIDS)"
    exit 0
  fi
  log "restarting: previous instance incomplete"
  stop
fi

# ---- 1. packages -------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  log "installing slurm-wlm munge"
  t0=$(date +%s)
  # postinst scripts must not start daemons themselves (we start and own every daemon below)
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # another apt-get may hold the locks (CI images, other services): wait for it, up to 5 minutes
  for try in 1 2 3 4 5 6 7 8 9 10; do
    apt-get -o DPkg::Lock::Timeout=300 update -qq && break
    [ "$try" = 10 ] && die "apt-get update failed"; sleep 10
  done
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  log "installed in $(( $(date +%s) - t0 )) s: $(slurmctld -V)"
fi

# ---- 2. configuration ---------------------------------------------------------------------------
mkdir -p "$NHT_SLURM_DIR"/{state,spool,log,run} "$(dirname "$SLURM_CONF")"
if [ -e "$SLURM_CONF" ] && ! grep -qF "$MARK" "$SLURM_CONF"; then
  die "$SLURM_CONF exists and was not written by this script; refusing to overwrite it (set SLURM_CONF)"
fi

NCPU=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
MEM_MB=$(( MEM_MB * 9 / 10 ))     # leave headroom so slurmd never reports less than configured
cat >"$SLURM_CONF" <<EOF
$MARK -- one-node test cluster, regenerated on every start.
ClusterName=nht
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
# Keep finished jobs visible to squeue (the profile's status command) for 5 minutes.
MinJobAge=300
ReturnToService=2
# Trust the CPU/memory numbers below instead of draining the node on a hardware mismatch.
SlurmdParameters=config_overrides
StateSaveLocation=$NHT_SLURM_DIR/state
SlurmdSpoolDir=$NHT_SLURM_DIR/spool
SlurmctldPidFile=$NHT_SLURM_DIR/run/slurmctld.pid
SlurmdPidFile=$NHT_SLURM_DIR/run/slurmd.pid
SlurmctldLogFile=$NHT_SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$NHT_SLURM_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
log "wrote $SLURM_CONF (node $NODE, CPUs=$NCPU, RealMemory=$MEM_MB MB)"

# ---- 3. munge -----------------------------------------------------------------------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
  log "created /etc/munge/munge.key"
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key

: >"$PIDS"
record() { echo "$1 $2" >>"$PIDS"; log "$1 pid $2"; }

wait_pidfile() {  # wait_pidfile FILE SECONDS -> prints pid
  local f=$1 n=$(( $2 * 10 ))
  while [ "$n" -gt 0 ]; do
    if [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then cat "$f"; return 0; fi
    sleep 0.1; n=$((n - 1))
  done
  return 1
}

MUNGE_PID=/run/munge/munged.pid
if [ -s "$MUNGE_PID" ] && kill -0 "$(cat "$MUNGE_PID")" 2>/dev/null && munge -n </dev/null | unmunge >/dev/null 2>&1; then
  log "munged already running (pid $(cat "$MUNGE_PID")), not started by us: left alone"
else
  rm -f "$MUNGE_PID" /run/munge/munge.socket.2*
  runuser -u munge -- munged --pid-file="$MUNGE_PID"
  pid=$(wait_pidfile "$MUNGE_PID" 10) || die "munged did not start"
  record munged "$pid"
fi
munge -n </dev/null | unmunge >/dev/null || die "munge round trip failed"

# ---- 4. slurmctld + slurmd -----------------------------------------------------------------------
rm -f "$NHT_SLURM_DIR"/run/*.pid
# -c: cold start, forget jobs of an earlier instance
slurmctld -c -f "$SLURM_CONF" || die "slurmctld failed; see $NHT_SLURM_DIR/log/slurmctld.log"
pid=$(wait_pidfile "$NHT_SLURM_DIR/run/slurmctld.pid" 20) || { tail -20 "$NHT_SLURM_DIR/log/slurmctld.log" >&2; die "slurmctld did not start"; }
record slurmctld "$pid"
slurmd -N "$NODE" -f "$SLURM_CONF" || die "slurmd failed; see $NHT_SLURM_DIR/log/slurmd.log"
pid=$(wait_pidfile "$NHT_SLURM_DIR/run/slurmd.pid" 20) || { tail -20 "$NHT_SLURM_DIR/log/slurmd.log" >&2; die "slurmd did not start"; }
record slurmd "$pid"

# ---- 5. wait for the node -------------------------------------------------------------------------
for _ in $(seq 1 60); do
  node_idle && break
  sleep 1
done
if ! node_idle; then
  sinfo -N -l >&2 || true
  tail -20 "$NHT_SLURM_DIR/log/slurmctld.log" "$NHT_SLURM_DIR/log/slurmd.log" >&2 || true
  die "node $NODE did not become idle"
fi
sinfo -N -o '%N %T %c %m %P'
log "ready; stop with: bash .ci/services/slurm.sh stop"
