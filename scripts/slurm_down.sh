#!/usr/bin/env bash
# Stop the single-node SLURM started by scripts/slurm_up.sh: slurmd, slurmctld and munged
# (munged only if slurm_up.sh started it). `--purge` also removes the state directory
# (job state, logs). Safe to run when nothing is up.
set -euo pipefail

STATE="${RASA_SLURM_DIR:-/tmp/rasa-slurm}"
stop() { # pidfile name
  local pidfile=$1 name=$2 pid
  [[ -s $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    echo "slurm_down: stopped $name ($pid)"
  fi
  rm -f "$pidfile"
}
stop "$STATE/slurmd.pid" slurmd
stop "$STATE/slurmctld.pid" slurmctld
if [[ -e $STATE/munged.ours ]]; then
  stop /run/munge/munged.pid munged
  rm -f "$STATE/munged.ours"
fi
if [[ "${1:-}" == "--purge" ]]; then
  rm -rf "$STATE"
  echo "slurm_down: removed $STATE"
fi
