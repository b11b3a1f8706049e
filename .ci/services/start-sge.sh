#!/usr/bin/env bash
# start-sge.sh (MUPPET CI) - install (apt) and start a single-host Son of Grid Engine 8.1.9
# (sge_qmaster + sge_execd, queue all.q, PE smp) on Debian 12 as root, without systemd.
# Idempotent: safe to run again while it is up. Exits 0 only after a test job
# (`echo hi; exit 3`) ran and qacct reported exit_status 3.
#
# Env knobs:
#   SGE_SLOTS=8        slots of all.q on this host (may exceed nproc)
#   SGE_TIMEOUT=90     seconds to wait for daemons / the test job
set -euo pipefail
# MUPPET's own copy (CI and tests/test_batch.py rely on it); prints how long each phase took.
T0=$EPOCHREALTIME
since() { awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f s", b - a}'; }

export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
SLOTS=${SGE_SLOTS:-8}
TIMEOUT=${SGE_TIMEOUT:-90}
SPOOL=/var/spool/gridengine
COMMON=$SGE_ROOT/$SGE_CELL/common
QPID=$SPOOL/qmaster/qmaster.pid        # where sge_qmaster really writes it (the init script looks elsewhere)
EPID=/var/run/gridengine/execd.pid
UTIL=/usr/lib/gridengine
log() { echo "[start-sge +$(since)] $*" >&2; }
die() { log "ERROR: $*"; for f in $SPOOL/qmaster/messages $SPOOL/execd/*/messages; do [ -f "$f" ] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }; done; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
alive() { local f=$1 name=$2 p; [ -s "$f" ] || return 1; p=$(cat "$f" 2>/dev/null) || return 1
          [ -n "$p" ] && [ -r /proc/$p/comm ] && [ "$(cat /proc/$p/comm)" = "$name" ] && [ "$(awk '{print $3}' /proc/$p/stat)" != Z ]; }
# run a qconf command quietly; show its output only if it fails
qc() { local out; out=$(qconf "$@" 2>&1) || die "qconf $* failed: $out"; }
wait_for() { local what=$1; shift; local i; for ((i = 0; i < TIMEOUT * 5; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; die "timed out waiting for $what"; }

# ---- 1. the host name must resolve ---------------------------------------------
H=$(hostname)
if ! getent hosts "$H" >/dev/null; then
  log "hostname $H does not resolve: adding '127.0.1.1 $H' to /etc/hosts"
  echo "127.0.1.1 $H" >> /etc/hosts
fi

# ---- 2. packages (debconf preseeded: cell 'default', this host as master) ------
missing=""
for p in gridengine-master gridengine-exec gridengine-client; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  log "installing:$missing"
  debconf-set-selections <<EOF
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string default
gridengine-common shared/gridenginemaster string $H
EOF
  export DEBIAN_FRONTEND=noninteractive
  # one apt at a time: start-sge.sh and start-slurm.sh may run side by side
  flock /tmp/muppet-ci-apt.lock sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null"
  log "installed"
fi

# ---- 3. host name aliasing --------------------------------------------------------
# SGE refuses clients whose IP reverse-resolves to a name other than the one they claim
# ("access denied (client IP resolved to host name "localhost". This is not identical to
# clients host name "vm")"), which happens when the hostname sits on 127.0.0.1 next to
# localhost in /etc/hosts. host_aliases makes SGE treat those names as one host.
SGEH=$($UTIL/gethostname -name)
IP=$(getent ahostsv4 "$SGEH" | awk 'NR == 1 {print $1}')
REV=$($UTIL/gethostbyaddr -name "$IP" 2>/dev/null || true)
aliases=$(printf '%s\n' "$REV" "$H" localhost | awk -v h="$SGEH" 'NF && $1 != h && !seen[$1]++' | tr '\n' ' ')
mkdir -p "$COMMON"
want_aliases="$SGEH ${aliases% }"
if [ "$(cat "$COMMON/host_aliases" 2>/dev/null)" != "$want_aliases" ]; then
  echo "$want_aliases" > "$COMMON/host_aliases"; chown sgeadmin:sgeadmin "$COMMON/host_aliases"
  if alive "$QPID" sge_qmaster; then log "host_aliases changed: restarting qmaster"; kill "$(cat "$QPID")"
    for ((i = 0; i < TIMEOUT * 5; i++)); do alive "$QPID" sge_qmaster || break; sleep 0.2; done; fi
fi

# ---- 4. cluster spool (re)initialisation ---------------------------------------
if [ -e "$SPOOL/spooldb/sge" ] && [ "$(cat "$COMMON/act_qmaster" 2>/dev/null)" != "$SGEH" ]; then
  log "master name changed ($(cat "$COMMON/act_qmaster" 2>/dev/null) -> $SGEH): re-initialising the cluster spool"
  alive "$EPID" sge_execd && kill "$(cat "$EPID")"
  alive "$QPID" sge_qmaster && kill "$(cat "$QPID")"
  for ((i = 0; i < TIMEOUT * 5; i++)); do alive "$QPID" sge_qmaster || alive "$EPID" sge_execd || break; sleep 0.2; done
  rm -rf "$SPOOL/spooldb" "$SPOOL/qmaster" "$SPOOL/execd"
fi
for d in "$SPOOL/qmaster" "$SPOOL/qmaster/job_scripts" "$SPOOL/spooldb" "$SPOOL/execd" /var/run/gridengine; do
  mkdir -p "$d"; chown sgeadmin:sgeadmin "$d"
done
if [ ! -e "$SPOOL/spooldb/sge" ]; then
  log "initialising cluster spool"
  su -s /bin/sh -c "/usr/share/gridengine/scripts/init_cluster $SGE_ROOT $SGE_CELL $SPOOL/spooldb sgeadmin" sgeadmin >/dev/null
fi
echo "$SGEH" > "$COMMON/act_qmaster"; chown sgeadmin:sgeadmin "$COMMON/act_qmaster"

# ---- 5. qmaster ----------------------------------------------------------------------
# A qmaster still shutting down (it removes its pid file early) must be gone before a new one
# starts: two of them on one spool make the new one shut itself down a little later.
live_qmaster() { local p; for p in $(pgrep -x sge_qmaster); do [ "$(awk '{print $3}' /proc/$p/stat 2>/dev/null)" = Z ] || return 0; done; return 1; }
for ((i = 0; i < TIMEOUT * 5; i++)); do
  qconf -sss >/dev/null 2>&1 && break
  live_qmaster || break
  sleep 0.2
done
if ! alive "$QPID" sge_qmaster; then
  # after an unclean stop (kill -9) qmaster's job counter file is stale and job ids would be
  # handed out again (qacct -j N then shows two jobs): move it past the highest accounted id
  acct_max=$(awk -F: '!/^#/ && $6 + 0 > m {m = $6 + 0} END {print m + 0}' "$COMMON/accounting" 2>/dev/null || echo 0)
  seq_cur=$(cat "$SPOOL/qmaster/jobseqnum" 2>/dev/null || echo 0)
  if [ "${acct_max:-0}" -gt "${seq_cur:-0}" ] 2>/dev/null; then
    log "job counter $seq_cur behind accounting ($acct_max): bumping"
    echo "$acct_max" > "$SPOOL/qmaster/jobseqnum"; chown sgeadmin:sgeadmin "$SPOOL/qmaster/jobseqnum"
  fi
  log "starting sge_qmaster"
  rm -f "$QPID"
  # no inherited stdio: a qmaster left holding the caller's pipe (start-sge.sh | tee)
  # shut itself down about 40 s after starting in our tests
  /etc/init.d/gridengine-master start </dev/null >/dev/null 2>&1
fi
wait_for "qmaster to answer" qconf -sss
log "qmaster answers"

# ---- 6. configuration (idempotent) ---------------------------------------------------
TMP=$(mktemp -d /tmp/start-sge.XXXXXX); chmod 755 "$TMP"
trap 'rm -rf "$TMP"' EXIT
# global: root may run jobs (min_uid/min_gid 1000 by default), accounting file written at once,
# execd reports every 5 s (not 40): after a qmaster restart the queue is usable that much sooner
qconf -sconf global | sed '/^#/d' | awk '
/^min_uid[ \t]/ {print "min_uid                      0"; next}
/^min_gid[ \t]/ {print "min_gid                      0"; next}
/^load_report_time[ \t]/ {print "load_report_time             00:00:05"; next}
/^reporting_params[ \t]/ {print "reporting_params             accounting=true reporting=false flush_time=00:00:01 accounting_flush_time=00:00:00 joblog=false sharelog=00:00:00"; skip=1; next}
skip && /^[ \t]/ {next}
{skip=0; print}' > "$TMP/global"
qc -Mconf "$TMP/global"
# scheduler: run every second and right after submits/finishes (default: every 15 s)
qconf -ssconf | sed -e 's/^schedule_interval .*/schedule_interval 0:0:1/' -e 's/^flush_submit_sec .*/flush_submit_sec 1/' \
  -e 's/^flush_finish_sec .*/flush_finish_sec 1/' -e 's/^schedd_job_info .*/schedd_job_info false/' > "$TMP/sconf"
qc -Msconf "$TMP/sconf"
qconf -sh 2>/dev/null | grep -qx "$SGEH" || qc -ah "$SGEH"
qconf -ss 2>/dev/null | grep -qx "$SGEH" || qc -as "$SGEH"
if ! qconf -se "$SGEH" >/dev/null 2>&1; then
  printf 'hostname %s\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' "$SGEH" > "$TMP/exechost"
  qc -Ae "$TMP/exechost"
fi
printf 'group_name @allhosts\nhostlist %s\n' "$SGEH" > "$TMP/hgrp"
if qconf -shgrp @allhosts >/dev/null 2>&1; then qc -Mhgrp "$TMP/hgrp"; else qc -Ahgrp "$TMP/hgrp"; fi
if ! qconf -sp smp >/dev/null 2>&1; then
  printf 'pe_name smp\nslots 9999\nuser_lists NONE\nxuser_lists NONE\nstart_proc_args NONE\nstop_proc_args NONE\nallocation_rule $pe_slots\ncontrol_slaves FALSE\njob_is_first_task TRUE\nurgency_slots min\naccounting_summary FALSE\nqsort_args NONE\n' > "$TMP/pe"
  qc -Ap "$TMP/pe"
fi
if ! qconf -sq all.q >/dev/null 2>&1; then
  { cat <<QEOF
qname                 all.q
hostlist              @allhosts
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               smp
rerun                 FALSE
slots                 $SLOTS
tmpdir                /tmp
shell                 /bin/bash
prolog                NONE
epilog                NONE
shell_start_mode      posix_compliant
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
QEOF
    for l in s_rt h_rt s_cpu h_cpu s_fsize h_fsize s_data h_data s_stack h_stack s_core h_core s_rss h_rss s_vmem h_vmem; do
      printf '%-21s INFINITY\n' "$l"
    done
  } > "$TMP/queue"
  qc -Aq "$TMP/queue"
fi
for kv in "hostlist @allhosts" "slots $SLOTS" "pe_list smp" "load_thresholds NONE" "shell /bin/bash"; do
  qconf -rattr queue $kv all.q >/dev/null 2>&1 || true
done

# ---- 7. execd --------------------------------------------------------------------------
if ! alive "$EPID" sge_execd; then
  log "starting sge_execd"
  rm -f "$EPID"
  /etc/init.d/gridengine-exec start </dev/null >/dev/null 2>&1
fi
# queue instance usable = listed with no state letters (u=unknown, E=error, d=disabled, a=alarm ...)
qi_ok() { qstat -f -q "all.q@$SGEH" 2>/dev/null | awk -v q="all.q@$SGEH" '$1 == q {found=1; ok=(NF == 5)} END {exit !(found && ok)}'; }
for ((i = 0; i < TIMEOUT * 5; i++)); do
  qi_ok && break
  if [ $((i % 10)) = 9 ]; then qmod -c "all.q@$SGEH" >/dev/null 2>&1 || true; qmod -e "all.q@$SGEH" >/dev/null 2>&1 || true; fi
  sleep 0.2
done
qi_ok || die "queue instance all.q@$SGEH not usable: $(qstat -f 2>&1 | tail -n 3)"
log "queue all.q@$SGEH usable"

# ---- 8. test job (submit, poll qstat until it is gone, read qacct) ----------------------
printf '#!/bin/bash\necho hi\nexit 3\n' > "$TMP/job.sh"
JOB=$(cd "$TMP" && qsub -terse -N start-sge-test -o "$TMP/out" -e "$TMP/err" job.sh 2>"$TMP/qsub.err") || die "qsub failed: $(cat "$TMP/qsub.err")"
[ -n "$JOB" ] || die "qsub returned no job id"
wait_for "test job $JOB to finish" sh -c "! qstat -j $JOB"
wait_for "qacct record of job $JOB" sh -c "qacct -j $JOB"
status=$(qacct -j "$JOB" | awk '$1 == "exit_status" {s = $2} END {print s}')   # last record = newest
[ "$status" = 3 ] || die "qacct -j $JOB: exit_status '$status', expected 3"
[ "$(cat "$TMP/out")" = hi ] || die "unexpected stdout: $(cat "$TMP/out" 2>&1)"
log "OK: SGE 8.1.9 up on $SGEH (all.q slots=$SLOTS); test job $JOB exited 3 as expected"
