#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for CI and for trying the Slurm path locally.
#
#   scripts/slurm_cluster.sh start     install Debian's packages if missing, configure, start
#                                      munge, MariaDB + slurmdbd (so sacct works), slurmctld, slurmd
#   scripts/slurm_cluster.sh stop      cancel leftover jobs, stop every daemon by its pid file
#   scripts/slurm_cluster.sh status
#
# Needs root and no systemd (daemons are started directly). Partition `debug` holds one node named
# `localhost` whose CPUs and memory come from `slurmd -C`. Accounting matters: submitit polls
# `sacct` for job states, and without it a job that dies before writing its result hangs the
# launcher forever. KillWait is 5 s because submitit jobs ignore SIGTERM.
# State, spool, logs and pid files live in $SLURM_BASE (default /tmp/qat_lab_slurm).
set -euo pipefail

BASE=${SLURM_BASE:-/tmp/qat_lab_slurm}
ETC=/etc/slurm
CLUSTER=qatlab
DB_USER=slurm
DB_PASS=qatlab-ci

say() { printf '[slurm_cluster] %s\n' "$*" >&2; }

until_ok() {  # until_ok SECONDS WHAT COMMAND...: poll until the command succeeds
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  while ! "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then say "gave up waiting for $what (see $BASE/log)"; return 1; fi
    sleep 0.2
  done
}

install_packages() {
  local missing=()
  for bin in slurmctld slurmd sbatch munged slurmdbd mariadbd; do command -v "$bin" >/dev/null || missing+=("$bin"); done
  ((${#missing[@]} == 0)) && return 0
  say "installing slurm, munge, slurmdbd, mariadb (missing: ${missing[*]})"
  # Package scripts try to start services; there is no init system to start them with.
  local added_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && added_policy=1
  fi
  apt-get update -q >"$BASE/log/apt.log" 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    slurmctld slurmd slurm-client munge slurmdbd mariadb-server >>"$BASE/log/apt.log" 2>&1 \
    || { tail -20 "$BASE/log/apt.log" >&2; return 1; }
  ((added_policy)) && rm -f /usr/sbin/policy-rc.d
  return 0
}

write_configs() {
  local hardware
  hardware=$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]* //')  # what slurmd will detect, or the node drains
  mkdir -p "$ETC"
  cat >"$ETC/slurm.conf" <<EOF
# written by qat_lab scripts/slurm_cluster.sh
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/slurmctld.pid
SlurmdPidFile=$BASE/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
KillWait=5
MinJobAge=3600
ReturnToService=2
EnforcePartLimits=ALL
NodeName=localhost NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$BASE/log/slurmdbd.log
PidFile=$BASE/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$ETC/slurmdbd.conf"  # slurmdbd refuses a readable password file
}

start_munge() {
  mkdir -p /run/munge /var/lib/munge /var/log/munge /etc/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge
  [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key && chown munge:munge /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged --force  # --force: a killed munged may have left its socket
  until_ok 10 munge bash -c 'munge -n | unmunge'
}

start_database() {
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql >"$BASE/log/mariadb-install.log" 2>&1
  nohup /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --innodb-buffer-pool-size=128M \
    >"$BASE/log/mariadb.log" 2>&1 &
  echo $! >"$BASE/mariadb.pid"
  until_ok 30 mariadb mariadb-admin ping
  mariadb -e "CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
              GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'localhost'; FLUSH PRIVILEGES;"
  slurmdbd
  until_ok 60 slurmdbd sacctmgr -n list cluster
  sacctmgr -n list cluster format=cluster%30 | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
}

node_idle() { [[ $(sinfo -h -n localhost -o %T) == idle ]]; }

start() {
  local t0=$SECONDS
  stop 2>/dev/null || true  # daemons left from an earlier start (pid files in $BASE)
  mkdir -p "$BASE"/{state,spool,log}
  install_packages
  write_configs
  start_munge
  start_database
  slurmctld
  until_ok 30 slurmctld bash -c 'scontrol ping | grep -q UP'
  slurmd -N localhost  # the node is named localhost whatever the hostname is
  until_ok 30 "an idle node" node_idle
  srun -N1 -n1 -t 1 true
  until_ok 30 "the node to be idle again" node_idle
  say "cluster up in $((SECONDS - t0)) s"
}

stop_pidfiles() {  # SIGTERM each daemon named by a pid file, SIGKILL it after 10 s
  local pids=() f pid
  for f in "$@"; do
    [[ -s $f ]] || continue
    pid=$(cat "$f")
    kill -0 "$pid" 2>/dev/null && kill "$pid" && pids+=("$pid")
  done
  for _ in $(seq 100); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && kill -9 "$pid"; done
  rm -f "$@"
}

stop() {
  if [[ -s $BASE/slurmctld.pid ]] && kill -0 "$(cat "$BASE/slurmctld.pid")" 2>/dev/null; then
    scancel --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 50); do [[ -z $(squeue -h 2>/dev/null) ]] && break; sleep 0.2; done
  fi
  stop_pidfiles "$BASE/slurmd.pid" "$BASE/slurmctld.pid"
  stop_pidfiles "$BASE/slurmdbd.pid" "$BASE/mariadb.pid" /run/munge/munged.pid
  say "stopped"
}

status() {
  for f in "$BASE"/{slurmd,slurmctld,slurmdbd,mariadb}.pid /run/munge/munged.pid; do
    [[ -s $f ]] && printf '%-36s %s\n' "$f" "$(kill -0 "$(cat "$f")" 2>/dev/null && echo running || echo dead)"
  done
  sinfo 2>/dev/null || true
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
