#!/usr/bin/env bash
# Soak: a 3-node KAT cluster on loopback under continuous churn for a given time, then a
# report of memory growth, etcd's size and leaks.
#
#   scripts/soak.sh [--duration 1h] [--dir DIR] [--report FILE] [--keep]
#
#   --duration T   how long the churn runs: 90s, 30m, 1h (default 1h)
#   --dir DIR      where the nodes' state goes, a directory that does not exist yet
#                  (default: a new /tmp/kat-soak.XXXX)
#   --report FILE  also write the report (markdown) there
#   --keep         leave DIR behind (logs, samples.csv)
#
# n1 (node soak1: init, the control plane) runs its instances on real rootless Podman
# when this host can (root, Podman, busybox-static; else on the fake runtime); n2 and n3
# (soak2, soak3, joined) run theirs on the fake runtime: two agents on one host cannot
# own the same workload users. The churn, every 5 s: `soak-a` applied with new replicas and a new
# environment (a rolling update); every 3rd round `soak-b` applied or deleted; every
# 2nd round one of n1's containers killed with SIGKILL (by PID, found from the
# container ID the instance reports). Every minute: each agent's and etcd's RSS and
# etcd's database size, into DIR/samples.csv. At the end every workload is deleted and
# the agents stopped, and the report counts what is left: processes the agents started,
# workload users, containers, units.
#
# Needs the release binaries (built here) and etcd, etcdctl, ss. Uses loopback only.
set -euo pipefail

duration=3600
dir=""
report=""
keep=0
parse_duration() {
  local t=$1
  case "$t" in
    *h) echo $(( ${t%h} * 3600 )) ;;
    *m) echo $(( ${t%m} * 60 )) ;;
    *s) echo "${t%s}" ;;
    *[!0-9]*|"") echo "soak.sh: --duration $t: not a time (90s, 30m, 1h)" >&2; exit 2 ;;
    *) echo "$t" ;;
  esac
}
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$(parse_duration "${2:?--duration needs a value}"); shift 2 ;;
    --dir) dir=${2:?--dir needs a value}; shift 2 ;;
    --report) report=${2:?--report needs a value}; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "soak.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done
for p in etcd etcdctl ss; do
  command -v "$p" >/dev/null || { echo "soak.sh: $p not found (scripts/install-deps.sh installs it)" >&2; exit 1; }
done

# Paths given are the caller's, relative to where it stands.
if [ -n "$dir" ]; then
  dir=$(realpath -m "$dir")
  if [ -e "$dir" ]; then
    echo "soak.sh: --dir $dir exists; give a new directory (the soak removes it afterwards unless --keep)" >&2
    exit 2
  fi
fi
if [ -n "$report" ]; then report=$(realpath -m "$report"); fi
cd "$(dirname "$0")/.."
echo "soak: building release binaries" >&2
cargo build --release --bins -q
bin=$PWD/target/release
if [ -z "$dir" ]; then dir=$(mktemp -d /tmp/kat-soak.XXXX); fi
mkdir -p "$dir" && chmod 700 "$dir"
log() { echo "soak $(date -u +%H:%M:%S): $*" >&2; }

free_port() {
  local p
  for _ in $(seq 200); do
    p=$(( 20000 + RANDOM % 40000 ))
    if [ -z "$(ss -Htan "sport = :$p")" ] && ! grep -qx "$p" "$dir/ports" 2>/dev/null; then
      echo "$p" >> "$dir/ports"; echo "$p"; return
    fi
  done
  echo "soak.sh: no free port" >&2; exit 1
}

client_port=$(free_port); peer_port=$(free_port); api_port=$(free_port); agent_port=$(free_port)
cat > "$dir/cluster.kat" <<EOF
apiVersion: kat.dws.rip/v1alpha1
kind: ClusterConfiguration
metadata: {name: soak}
spec:
  etcdClientPort: $client_port
  etcdPeerPort: $peer_port
  apiPort: $api_port
  agentPort: $agent_port
  backupPath: $dir/backups
  backupIntervalMinutes: 5
EOF
api=127.0.0.1:$api_port

# n1's runtime: real rootless Podman if this host can, with an image of our own name.
image=localhost/kat-soak-busybox:latest
n1_runtime=(--runtime fake)
podman_used=0
if [ "$(id -u)" -eq 0 ] && command -v podman >/dev/null && [ -x /bin/busybox ]; then
  if ! podman image exists "$image"; then
    root=$(mktemp -d)
    mkdir -p "$root/bin"
    cp /bin/busybox "$root/bin/busybox"
    for a in sh sleep echo true; do ln -s busybox "$root/bin/$a"; done
    chmod -R a+rX "$root"
    tar -C "$root" -cf "$root.tar" .
    podman import -q "$root.tar" "$image" >/dev/null
    rm -rf "$root" "$root.tar"
  fi
  n1_runtime=(--instance-network none)
  podman_used=1
fi

agents=()
declare -A pid_of
start_agent() {
  local name=$1; shift
  "$bin/kat-agent" --log-format json "$@" > "$dir/$name.log" 2>&1 &
  pid_of[$name]=$!
  agents+=("$name")
}
wait_log() {
  local file=$1 text=$2 within=$3
  for _ in $(seq $((within * 10))); do
    grep -q "$text" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "soak.sh: no '$text' in $file within ${within}s" >&2; tail -5 "$file" >&2; return 1
}

kc() { "$bin/katcall" --config "$dir/n1/katcall.yaml" "$@"; }

descendants() {
  # Every process whose parent chain leads to PID $1 (read from /proc, by PID).
  local root=$1
  ps -eo pid=,ppid= | awk -v r="$root" '
    { parent[$1] = $2 }
    END { for (p in parent) { q = p; while (q in parent && q != r && q > 1) q = parent[q]; if (q == r && p != r) print p } }'
}

cleanup_done=0
cleanup() {
  [ "$cleanup_done" -eq 1 ] && return
  cleanup_done=1
  for name in "${agents[@]}"; do kill -TERM "${pid_of[$name]}" 2>/dev/null || true; done
  for name in "${agents[@]}"; do wait "${pid_of[$name]}" 2>/dev/null || true; done
  # The agent's runtime directory for node soak1 (its workload users' managers).
  rm -rf /run/kat/soak1
  if [ "$keep" -eq 0 ]; then rm -rf "$dir"; else echo "soak: kept $dir" >&2; fi
}
trap cleanup EXIT

log "starting n1 (${n1_runtime[*]}), n2, n3 (fake) in $dir for ${duration}s"
start_agent n1 init --config "$dir/cluster.kat" --state-dir "$dir/n1" --node-name soak1 \
  --advertise-address 127.0.0.1 "${n1_runtime[@]}"
wait_log "$dir/n1.log" "katcall configuration written" 30
token=$(kc token create join --reusable --ttl 1h 2>/dev/null)
for n in 2 3; do
  start_agent "n$n" join --leader-api "$api" --token "$token" --state-dir "$dir/n$n" \
    --node-name "soak$n" --advertise-address "127.0.0.$n" --runtime fake
  wait_log "$dir/n$n.log" "joined the cluster" 30
done
etcd_pid() { ps -eo pid=,ppid=,comm= | awk -v p="${pid_of[n1]}" '$2 == p && $3 == "etcd" {print $1; exit}'; }
eval "$("$bin/kat-agent" etcd-env --state-dir "$dir/n1")"

workload() {
  local name=$1 replicas=$2 round=$3
  mkdir -p "$dir/wl/$name"
  cat > "$dir/wl/$name/workload.kat" <<EOF
apiVersion: kat.dws.rip/v1alpha1
kind: Workload
metadata:
  name: $name
spec:
  type: SERVICE
  source:
    image: $image
  replicas: $replicas
  container:
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    env:
      - {name: SOAK_ROUND, value: "$round"}
EOF
  kc apply -f "$dir/wl/$name" >/dev/null 2>>"$dir/churn-errors.log" || echo "apply $name failed" >> "$dir/churn-errors.log"
}

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
db_bytes() { etcdctl endpoint status -w json 2>/dev/null | grep -o '"dbSize":[0-9]*' | head -1 | cut -d: -f2; }
echo "seconds,n1_rss_kib,n2_rss_kib,n3_rss_kib,etcd_rss_kib,etcd_db_bytes,instances" > "$dir/samples.csv"
# Instances the API lists; -1 when katcall fails (not "none").
count_instances() {
  local out
  out=$(kc get instances -o json 2>/dev/null) || { echo -1; return; }
  grep -c '"id"' <<<"$out" || true
}
sample() {
  local t=$1 count
  count=$(count_instances)
  echo "$t,$(rss_kib "${pid_of[n1]}"),$(rss_kib "${pid_of[n2]}"),$(rss_kib "${pid_of[n3]}"),$(rss_kib "$(etcd_pid)"),$(db_bytes),$count" >> "$dir/samples.csv"
}

kill_one_container() {
  # One of n1's containers: its main process, found from the container ID through the
  # conmon that runs it (both by PID), gets SIGKILL.
  local cid conmon victim
  cid=$(kc get instances -o json 2>/dev/null | tr -d ' \n' | grep -o '"node":"soak1"[^}]*"containerId":"[0-9a-f]*"' \
    | grep -o '[0-9a-f]\{64\}' | shuf -n1 || true)
  [ -n "$cid" ] || return 0
  conmon=$(ps -eo pid=,comm=,args= | awk -v c="$cid" '$2 == "conmon" && index($0, c) {print $1; exit}')
  [ -n "$conmon" ] || return 0
  victim=$(ps -eo pid=,ppid= | awk -v p="$conmon" '$2 == p {print $1; exit}')
  [ -n "$victim" ] || return 0
  kill -KILL "$victim" 2>/dev/null && kills=$((kills + 1)) || true
}

started=$(date +%s)
end=$((started + duration))
round=0 kills=0 next_sample=$started
b_present=0
while [ "$(date +%s)" -lt "$end" ]; do
  now=$(date +%s)
  if [ "$now" -ge "$next_sample" ]; then
    sample $((now - started)); next_sample=$((next_sample + 60))
  fi
  round=$((round + 1))
  workload soak-a $((1 + RANDOM % 4)) "$round"
  if [ $((round % 3)) -eq 0 ]; then
    if [ "$b_present" -eq 1 ]; then
      kc delete workload soak-b --purge-volumes >/dev/null 2>>"$dir/churn-errors.log" || true; b_present=0
    else
      workload soak-b 2 "$round"; b_present=1
    fi
  fi
  if [ "$podman_used" -eq 1 ] && [ $((round % 2)) -eq 0 ]; then kill_one_container; fi
  sleep 5
done
sample $(( $(date +%s) - started ))
log "churn over: $round rounds, $kills containers killed"

# Teardown: delete everything (with the workload users and volumes), wait for the
# instances to go, then stop the agents.
kc delete workload soak-a --purge-volumes >/dev/null 2>&1 || true
kc delete workload soak-b --purge-volumes >/dev/null 2>&1 || true
for _ in $(seq 120); do
  [ "$(count_instances)" -eq 0 ] && break
  sleep 1
done
sleep 5
left_instances=$(count_instances)
started_by_agents=()
for name in "${agents[@]}"; do
  mapfile -t -O "${#started_by_agents[@]}" started_by_agents < <(descendants "${pid_of[$name]}")
done
for name in "${agents[@]}"; do kill -TERM "${pid_of[$name]}" 2>/dev/null || true; done
stop_started=$(date +%s)
for name in "${agents[@]}"; do wait "${pid_of[$name]}" 2>/dev/null || true; done
stop_seconds=$(( $(date +%s) - stop_started ))
sleep 5
leaked_processes=0
for p in "${started_by_agents[@]}"; do
  [ -d "/proc/$p" ] && leaked_processes=$((leaked_processes + 1))
done
leaked_users=$(getent passwd | grep -c '^kat_wl_default_soak-' || true)
users_processes=0
for u in $(getent passwd | grep '^kat_wl_default_soak-' | cut -d: -f1); do
  users_processes=$((users_processes + $(ps -o pid= -u "$u" | wc -l)))
done
leaked_containers=0
if [ "$podman_used" -eq 1 ]; then
  leaked_containers=$(podman ps -a --format '{{.Names}}' | grep -c '^kat-' || true)
fi
backups=$( (find "$dir/backups" -name 'kat-*.db' 2>/dev/null || true) | wc -l)

# RSS growth: from the first sample after a warm-up (a tenth of the run, at least one
# sample in) to the last, per hour.
growth() {
  local col=$1
  awk -F, -v c="$col" -v d="$duration" '
    NR == 1 { next }
    { t[NR] = $1; v[NR] = $c; n = NR }
    END {
      w = 2; while (w < n && t[w] < d / 10) w++
      if (n <= w) { print "n/a"; exit }
      dt = (t[n] - t[w]) / 3600; if (dt <= 0) { print "n/a"; exit }
      printf "%.1f → %.1f MiB (%+.2f MiB/h)", v[w] / 1024, v[n] / 1024, (v[n] - v[w]) / 1024 / dt
    }' "$dir/samples.csv"
}
db_range=$(awk -F, 'NR > 1 && $6 != "" { if (min == "" || $6 < min) min = $6; if ($6 > max) max = $6; last = $6 }
  END { printf "%.1f MiB at the end (%.1f–%.1f MiB over the run)", last / 1048576, min / 1048576, max / 1048576 }' "$dir/samples.csv")

out=$(cat <<EOF
Soak of $(date -u +%Y-%m-%d): $((duration / 60)) min, 3 nodes on loopback (n1: $([ "$podman_used" -eq 1 ] && echo "rootless Podman" || echo "fake runtime"); n2, n3: fake runtime), $round churn rounds, $kills containers killed.

| what | figure |
|---|---|
| n1 agent RSS (leader, etcd client) | $(growth 2) |
| n2 agent RSS | $(growth 3) |
| n3 agent RSS | $(growth 4) |
| etcd RSS | $(growth 5) |
| etcd database | $db_range |
| backups kept | $backups |
| instances left after deleting every workload | $left_instances |
| processes the agents started, left after they stopped | $leaked_processes |
| workload users left (and their processes) | $leaked_users ($users_processes) |
| containers left (n1's Podman) | $leaked_containers |
| agents' stop (SIGTERM → all exited) | ${stop_seconds} s |
| churn errors (apply/delete failures) | $(wc -l < "$dir/churn-errors.log" 2>/dev/null || echo 0) |
EOF
)
echo "$out"
if [ -n "$report" ]; then echo "$out" > "$report"; fi
