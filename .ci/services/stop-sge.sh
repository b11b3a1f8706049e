#!/usr/bin/env bash
# stop-sge.sh (MUPPET CI) - stop sge_execd and sge_qmaster started by start-sge.sh.
#   --purge   also wipe the cluster spool, job-number counter and accounting file
#             (the next start-sge.sh re-initialises a clean cluster; job ids restart at 1)
set -uo pipefail
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
SPOOL=/var/spool/gridengine
QPID=$SPOOL/qmaster/qmaster.pid
EPID=/var/run/gridengine/execd.pid
log() { echo "[stop-sge] $*" >&2; }
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
pid_of() { local f=$1 name=$2 p; [ -s "$f" ] || return 1; p=$(cat "$f"); [ -n "$p" ] && [ -r /proc/$p/comm ] &&
           [ "$(cat /proc/$p/comm)" = "$name" ] && [ "$(awk '{print $3}' /proc/$p/stat)" != Z ] && echo "$p"; }
stop() { # pidfile name
  local p i; p=$(pid_of "$1" "$2") || return 0
  log "stopping $2 ($p)"; kill "$p" 2>/dev/null
  for ((i = 0; i < 200; i++)); do pid_of "$1" "$2" >/dev/null || return 0; sleep 0.1; done
  log "$2 did not stop: SIGKILL"; kill -9 "$p" 2>/dev/null; sleep 0.5
}
# polite shutdown through the qmaster first (execd first, so no job is left "running" in the spool)
if command -v qconf >/dev/null && qconf -sss >/dev/null 2>&1; then
  # delete all jobs first: an execd shutdown leaves running jobs' shepherds behind
  if [ -n "$(qstat -u '*' 2>/dev/null)" ]; then
    log "deleting all jobs"; qdel -f -u '*' >/dev/null 2>&1 || true
    for ((i = 0; i < 100; i++)); do [ -z "$(qstat -u '*' 2>/dev/null)" ] && break; sleep 0.1; done
  fi
  qconf -ke all >/dev/null 2>&1 || true
  for ((i = 0; i < 50; i++)); do pid_of "$EPID" sge_execd >/dev/null || break; sleep 0.1; done
fi
stop "$EPID" sge_execd
stop "$QPID" sge_qmaster
rm -f "$EPID" "$QPID"
if [ "${1:-}" = --purge ]; then
  log "purging SGE spool and accounting"
  rm -rf "$SPOOL/spooldb"/* "$SPOOL/qmaster" "$SPOOL/execd"/* "$SGE_ROOT/$SGE_CELL/common/accounting"
fi
exit 0
