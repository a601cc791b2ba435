#!/usr/bin/env bash
# Bring up a single-node SLURM cluster on this machine, without systemd: munged, slurmctld and
# `slurmd -N localhost`, with the node's CPUs (nproc), memory (free) and one fake GPU so that
# `--gres=gpu:1` (Snakemake's gpu=1) is schedulable. Used to run the workflow's SLURM profile
# and tests/test_slurm.py locally.
#
#   bash scripts/slurm_up.sh              # install (Debian: slurm-wlm, munge) if needed, start
#   bash scripts/slurm_up.sh --no-install # fail instead of installing
#   bash scripts/slurm_down.sh            # stop it again
#
# Re-runnable: when the cluster is up with this configuration it returns at once.
# Environment: RASA_SLURM_DIR (state, logs; default /tmp/rasa-slurm), RASA_SLURM_CONF_DIR
# (default /etc/slurm: where sbatch/squeue look), RASA_SLURM_PORT (slurmctld port, default
# 6817; slurmd uses the next one), RASA_SLURM_PARTITIONS (default "cpu gpu", the partitions of
# workflow/profiles/slurm; all on the one node, the first is the default). Needs root: daemons run as root (SlurmUser=root), munged as
# user munge.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
STATE="${RASA_SLURM_DIR:-/tmp/rasa-slurm}"
CONF_DIR="${RASA_SLURM_CONF_DIR:-/etc/slurm}"
CTLD_PORT="${RASA_SLURM_PORT:-6817}"
PARTITIONS="${RASA_SLURM_PARTITIONS:-cpu gpu}"
SLURMD_PORT=$((CTLD_PORT + 1))
MARKER="# written by rasa scripts/slurm_up.sh"
log() { echo "slurm_up: $*"; }
die() { echo "slurm_up: error: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (the daemons need it); e.g. sudo bash $0"

# --- 1. install ------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
  || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  [[ "${1:-}" == "--no-install" ]] && die "slurm-wlm/munge are not installed"
  command -v apt-get >/dev/null || die "no apt-get: install slurm (slurmctld, slurmd, client) and munge"
  t0=$(date +%s)
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # policy-rc.d 101 stops the packages from starting their services (there is no systemd).
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1; fi
  apt-get install -y -q --no-install-recommends slurm-wlm munge || { [[ $created_policy == 1 ]] && rm -f "$policy"; exit 1; }
  [[ $created_policy == 1 ]] && rm -f "$policy"
  log "installed slurm-wlm and munge in $(($(date +%s) - t0)) s"
fi

# --- 2. configuration ------------------------------------------------------------------
cpus=$(nproc)
mem_total=$(free -m | awk '/^Mem:/ {print $2}')
real_mem=$((mem_total * 9 / 10))
def_mem=$((real_mem / cpus))
((def_mem > 2048)) && def_mem=2048
ctld_host=$(hostname -s)
mkdir -p "$STATE"/{state,spool,log} "$CONF_DIR"
partition_lines=""
default="YES"
for p in $PARTITIONS; do
  partition_lines+="PartitionName=$p Nodes=localhost Default=$default MaxTime=INFINITE State=UP\\n"
  default="NO"
done
render() {
  sed -e "s|@PARTITIONS@|${partition_lines%\\n}|" -e "s|@STATE@|$STATE|g" -e "s|@CPUS@|$cpus|g" -e "s|@REAL_MEMORY@|$real_mem|g" \
    -e "s|@DEF_MEM_PER_CPU@|$def_mem|g" -e "s|@CTLD_HOST@|$ctld_host|g" \
    -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" "$1"
}
changed=0
for name in slurm.conf gres.conf; do
  dest="$CONF_DIR/$name"
  if [[ -e $dest ]] && ! head -n1 "$dest" | grep -qF "$MARKER"; then
    die "$dest exists and was not written by this script; move it away or set RASA_SLURM_CONF_DIR (and SLURM_CONF=\$RASA_SLURM_CONF_DIR/slurm.conf)"
  fi
  new=$(render "$HERE/slurm/$name.in")
  if [[ ! -e $dest ]] || [[ "$new" != "$(cat "$dest")" ]]; then
    printf '%s\n' "$new" >"$dest.tmp.$$" && mv "$dest.tmp.$$" "$dest"
    changed=1
  fi
done
export SLURM_CONF="$CONF_DIR/slurm.conf"

# --- 3. munge ----------------------------------------------------------------------------
key=/etc/munge/munge.key
if [[ ! -s $key ]]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge "$key"
chmod 700 /etc/munge
chmod 400 "$key"
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  rm -f /run/munge/munge.socket.2 /run/munge/munged.pid
  if command -v runuser >/dev/null; then
    runuser -u munge -- munged
  else
    su -s /bin/sh munge -c munged
  fi
  for _ in $(seq 100); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.02; done
  munge -n | unmunge >/dev/null || die "munged did not start (see /var/log/munge/munged.log)"
  touch "$STATE/munged.ours"
fi

# --- 4. slurmctld + slurmd ------------------------------------------------------------------
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
node_state() { sinfo -h -n localhost -o %T 2>/dev/null | head -n1 || true; }
if alive "$STATE/slurmctld.pid" && alive "$STATE/slurmd.pid" && [[ $changed == 0 ]]; then
  case "$(node_state)" in
    idle* | mixed* | allocated* | completing*) log "already up ($(node_state))"; exit 0 ;;
  esac
else
  # daemons of a previous configuration (node and partition changes need a restart), or one
  # of the pair died: stop what runs, then start both
  [[ $changed == 1 ]] && alive "$STATE/slurmctld.pid" && log "configuration changed: restarting"
  for d in slurmd slurmctld; do
    if alive "$STATE/$d.pid"; then kill "$(cat "$STATE/$d.pid")"; fi
  done
  for _ in $(seq 200); do
    alive "$STATE/slurmd.pid" || alive "$STATE/slurmctld.pid" || break
    sleep 0.05
  done
  slurmctld -f "$SLURM_CONF"
  # wait (bounded) for slurmctld to listen: slurmd registering (or a client call) before
  # that retries only a second later
  t0=$SECONDS
  until (exec 3<>"/dev/tcp/127.0.0.1/$CTLD_PORT") 2>/dev/null; do
    if ((SECONDS - t0 >= 2)) && ! alive "$STATE/slurmctld.pid"; then
      die "slurmctld exited: $(grep -E 'fatal|error' "$STATE/log/slurmctld.log" | tail -n1)"
    fi
    ((SECONDS - t0 < 30)) || die "slurmctld does not listen on port $CTLD_PORT; see $STATE/log/"
    sleep 0.01
  done
  slurmd -f "$SLURM_CONF" -N localhost
fi

# wait (bounded) for the node to register; resume it if a previous run left it down/drained
deadline=$((SECONDS + 30))
while ((SECONDS < deadline)); do
  st=$(node_state)
  case "$st" in
    idle* | mixed* | allocated* | completing*) log "up: node localhost $st, $cpus CPUs, ${real_mem} MB, 1 fake GPU; state in $STATE"; exit 0 ;;
    down* | drain* | fail*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 0.05
done
die "node did not become idle within 30 s (state: $(node_state)); see $STATE/log/"
