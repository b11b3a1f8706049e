#!/usr/bin/env bash
# stop-slurm.sh (MUPPET CI) - stop the daemons started by start-slurm.sh (by their pid files only).
#   --purge   also delete Slurm's saved state, logs and job-completion log (next start is clean)
set -uo pipefail
log() { echo "[stop-slurm] $*" >&2; }
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }

stop_pidfile() { # pidfile expected-comm
  local f=$1 name=$2 p i
  [ -s "$f" ] || return 0
  p=$(cat "$f"); [ -n "$p" ] && [ -r /proc/$p/comm ] && [ "$(cat /proc/$p/comm)" = "$name" ] || { rm -f "$f"; return 0; }
  log "stopping $name ($p)"; kill "$p" 2>/dev/null
  running() { [ -d /proc/$p ] && [ "$(awk '{print $3}' /proc/$p/stat 2>/dev/null)" != Z ]; }  # zombies count as gone
  for ((i = 0; i < 150; i++)); do running || break; sleep 0.1; done
  if running; then log "$name did not stop: SIGKILL"; kill -9 "$p" 2>/dev/null; sleep 0.5; fi
  rm -f "$f"
}
# cancel all jobs first: slurmstepd (and the job) outlive a stopped slurmd
if command -v squeue >/dev/null && scontrol ping 2>/dev/null | grep -q UP; then
  ids=$(squeue -h -o %i 2>/dev/null)
  if [ -n "$ids" ]; then
    log "cancelling all jobs"; scancel $ids 2>/dev/null
    for ((i = 0; i < 100; i++)); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.1; done
  fi
fi
stop_pidfile /run/slurmd.pid slurmd
stop_pidfile /run/slurmctld.pid slurmctld
stop_pidfile /run/slurmdbd.pid slurmdbd
# MariaDB only if start-slurm.sh started it
[ -e /run/start-slurm.mariadb ] && { log "stopping MariaDB"; /etc/init.d/mariadb stop >/dev/null 2>&1; rm -f /run/start-slurm.mariadb; }
stop_pidfile /run/munge/munged.pid munged
if [ "${1:-}" = --purge ]; then
  log "purging Slurm state"
  rm -rf /var/lib/slurm/slurmctld/* /var/lib/slurm/slurmd/* /var/log/slurm/*
fi
exit 0
