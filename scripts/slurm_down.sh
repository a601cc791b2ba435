#!/usr/bin/env bash
# Stop the single-node SLURM started by scripts/slurm_up.sh: slurmd, slurmctld and munged
# (munged only if slurm_up.sh started it). `--purge` also removes the state directory
# (job state, logs). Safe to run when nothing is up.
set -euo pipefail

STATE="${RASA_SLURM_DIR:-/tmp/rasa-slurm}"
pids=()
names=()
signal() { # pidfile name: SIGTERM the daemon if it runs
  local pid
  [[ -s $1 ]] || return 0
  pid=$(cat "$1")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" && pids+=("$pid") && names+=("$2 ($pid)")
  fi
  rm -f "$1"
}
signal "$STATE/slurmd.pid" slurmd
signal "$STATE/slurmctld.pid" slurmctld
if [[ -e $STATE/munged.ours ]]; then
  signal /run/munge/munged.pid munged
  rm -f "$STATE/munged.ours"
fi
# wait (bounded: 10 s) for all of them together, then force
for _ in $(seq 200); do
  alive=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  ((alive)) || break
  sleep 0.05
done
for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && kill -9 "$pid"; done
((${#names[@]})) && echo "slurm_down: stopped ${names[*]}"
if [[ "${1:-}" == "--purge" ]]; then
  rm -rf "$STATE"
  echo "slurm_down: removed $STATE"
fi
exit 0
