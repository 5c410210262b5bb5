#!/usr/bin/env bash
# The data store with 1 partition and with 32, on 3 nodes, in one run.
#
# Starts a 3-node zongheng cluster on loopback with `--store-partitions 1`,
# measures one-key transactions (`zongheng bench store-put`, 16 and 64
# clients) and one-key snapshot reads (`store-get`, 64 clients, 10,000 keys
# prefilled), stops it, does the same with 32 partitions, and repeats for
# --rounds rounds (1, 32, 1, 32, ...). Besides throughput and latency, each
# run reports how many synced Raft writes the three nodes made and how many
# fsyncs carried them (`Store.NodeStats`): with group commit, the appends of
# many partitions share fsyncs. Writes a markdown table of medians to
# bench/results/<date>-<hash>-store.md and every run's JSON report next to it.
#
# Usage: bench/store.sh [--rounds N] [--duration 10s] [--quick] [--out DIR]
#                       [--keep] [--no-build | --binary PATH [--commit REV]]
#                       [--base-port P]
# Every process this script starts is stopped on exit (by PID).
set -euo pipefail
cd "$(dirname "$0")/.."
repo_root=$PWD
command_line="bench/store.sh $*"

rounds=3
duration=10s
quick=false
keep=false
build=true
binary=""
commit=HEAD
out_dir=bench/results
base_port=25379

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while (($#)); do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --quick) quick=true; shift ;;
    --out) out_dir=$2; shift 2 ;;
    --keep) keep=true; shift ;;
    --no-build) build=false; shift ;;
    --binary) binary=$2; build=false; shift 2 ;;
    --commit) commit=$2; shift 2 ;;
    --base-port) base_port=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
if $quick; then
  rounds=1
  duration=2s
fi
[[ "$rounds" =~ ^[1-9][0-9]?$ ]] || { echo "--rounds must be 1 to 99" >&2; exit 2; }

# name|bench arguments; every run is bounded by --duration.
scenarios=(
  "store-put-16|store-put --clients 16 --key-space-size 100000"
  "store-put-64|store-put --clients 64 --key-space-size 100000"
  "store-get-64|store-get --clients 64 --key-space-size 10000 --prefill 10000"
)
partition_counts=(1 32)

log() { echo "== $*" >&2; }

command -v jq >/dev/null || {
  log "installing jq (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null
}
if $build; then
  log "building zongheng (release)"
  cargo build --release -p zongheng --quiet
fi

work=$(mktemp -d /tmp/zongheng-store-bench-XXXXXX)
mkdir -p "$work/bin"
cp "${binary:-$repo_root/target/release/zongheng}" "$work/bin/zongheng"
zongheng=$work/bin/zongheng
pids=()
stop_cluster() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
  pids=()
}
cleanup() {
  stop_cluster
  if $keep; then
    echo "kept $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_cluster P DIR: three nodes with P partitions; sets endpoints.
endpoints=""
start_cluster() {
  local partitions=$1 dir=$2 i name client peer initial="" list=""
  for i in 0 1 2; do
    initial+="n$((i + 1))=http://127.0.0.1:$((base_port + 10 * i + 1)),"
  done
  initial=${initial%,}
  for i in 0 1 2; do
    name="n$((i + 1))"
    client=$((base_port + 10 * i))
    peer=$((client + 1))
    for port in "$client" "$peer"; do
      port_free "$port" || { echo "port $port is in use; pick another --base-port" >&2; exit 1; }
    done
    mkdir -p "$dir"
    env NO_COLOR=1 "$zongheng" node --name "$name" --data-dir "$dir/$name" \
      --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
      --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
      --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token "store-bench-$$" \
      --heartbeat-interval 100 --election-timeout 1000 --store-partitions "$partitions" \
      >"$dir/$name.log" 2>&1 &
    pids+=($!)
    list+="http://127.0.0.1:$client,"
  done
  endpoints=${list%,}
  # Ready: every partition has a leader and a write goes through.
  local deadline=$((SECONDS + 90))
  until "$zongheng" store put bench-readiness ok --endpoints "$endpoints" --command-timeout 5s >/dev/null 2>&1 &&
    [[ $("$zongheng" store status --json --endpoints "$endpoints" |
      jq '[.partitions[] | select(.leader == "")] | length') == 0 ]]; do
    ((SECONDS < deadline)) || { echo "cluster with $partitions partitions not ready after 90 s; logs in $dir" >&2; keep=true; exit 1; }
    sleep 0.5
  done
}

date_utc=$(date -u +%Y-%m-%d)
git_hash=$(git rev-parse --short "$commit")
mkdir -p "$out_dir"
stem="$out_dir/$date_utc-$git_hash-store"
$quick && stem+="-quick"
raw="$stem.jsonl"
: >"$raw"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started_at=$(date -u +%H:%M:%S)
for round in $(seq "$rounds"); do
  for partitions in "${partition_counts[@]}"; do
    log "round $round: $partitions partition(s)"
    start_cluster "$partitions" "$work/r$round-p$partitions"
    for entry in "${scenarios[@]}"; do
      name=${entry%%|*}
      bench_args=${entry#*|}
      # shellcheck disable=SC2086 # bench_args is a list of words
      report=$("$zongheng" bench $bench_args --duration "$duration" --endpoints "$endpoints" --json) || {
        echo "bench $name failed with $partitions partitions; logs in $work" >&2
        keep=true
        exit 1
      }
      jq -c -n --argjson partitions "$partitions" --arg scenario "$name" --argjson round "$round" \
        --arg args "$bench_args --duration $duration" --argjson report "$report" \
        '{partitions: $partitions, scenario: $scenario, round: $round, args: $args, report: $report}' >>"$raw"
      log "$(printf 'P=%-3s %-13s %9.1f ops/s  p99 %8.3f ms  fsyncs %s  synced writes %s  raft messages %s in %s batches  errors %s' \
        "$partitions" "$name" "$(jq .ops_per_s <<<"$report")" "$(jq .latency_ms.p99 <<<"$report")" \
        "$(jq '.counters.fsyncs // 0' <<<"$report")" "$(jq '.counters.synced_writes // 0' <<<"$report")" \
        "$(jq '.counters.raft_messages // 0' <<<"$report")" "$(jq '.counters.raft_batches // 0' <<<"$report")" \
        "$(jq .errors_total <<<"$report")")"
    done
    stop_cluster
  done
done
finished_at=$(date -u +%H:%M:%S)

# --- the result file ----------------------------------------------------------

cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
cores=$(nproc)
memory_gib=$(awk '/^MemTotal/ {printf "%.1f", $2 / 1048576}' /proc/meminfo)
{
  echo "# zongheng data store: 1 vs 32 partitions, $date_utc, commit $git_hash"
  echo
  echo "Command: \`$command_line\` (rounds $rounds, $duration per run; $started_at to $finished_at UTC)."
  echo
  echo "- Machine: $cores cores ($cpu), $memory_gib GiB RAM, kernel $(uname -r); load average before the run: $load_before."
  echo "- $("$zongheng" --version); 3 nodes on loopback, heartbeat 100 ms, election timeout 1000 ms, replicas 3,"
  echo "  fsync before every acknowledgement. **The load generator and the three nodes share the machine's cores.**"
  echo "- \`store-put\`: one-key transactions (start timestamp, prewrite, commit timestamp, commit: two Raft writes"
  echo "  and two timestamp round trips each), random 8-byte keys, 256-byte values. \`store-get\`: one-key snapshot"
  echo "  reads (start timestamp, linearizable read at the partition's leader) of 10,000 prefilled keys."
  echo "- fsyncs/s and synced writes/s are summed over the three nodes (every Raft group's appends, votes and"
  echo "  truncations; \`Store.NodeStats\`); writes per fsync is their ratio: above 1, group commit merged"
  echo "  writes of several groups or requests into one fsync. Raft messages per call: append entries and votes"
  echo "  sent, over the \`Peer.RaftBatch\` calls that carried them (one call per peer carries many groups' messages)."
  echo "- Medians over rounds; the runs alternate between 1 and 32 partitions."
  echo
  echo "| scenario | partitions | ops/s | p50 ms | p99 ms | fsyncs/s | synced writes/s | writes per fsync | raft messages/s | messages per call | errors |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  jq -r -s '
    def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def round1: (. * 10 | round) / 10;
    def round3: (. * 1000 | round) / 1000;
    group_by([.scenario, .partitions]) | sort_by(.[0].scenario, .[0].partitions) | .[] |
    . as $runs |
    ($runs | map(.report.elapsed_s) ) as $elapsed |
    [ $runs[0].scenario,
      ($runs[0].partitions | tostring),
      ($runs | map(.report.ops_per_s) | median | round1 | tostring),
      ($runs | map(.report.latency_ms.p50) | median | round3 | tostring),
      ($runs | map(.report.latency_ms.p99) | median | round3 | tostring),
      ($runs | map((.report.counters.fsyncs // 0) / .report.elapsed_s) | median | round1 | tostring),
      ($runs | map((.report.counters.synced_writes // 0) / .report.elapsed_s) | median | round1 | tostring),
      ($runs | map(if (.report.counters.fsyncs // 0) > 0 then .report.counters.synced_writes / .report.counters.fsyncs else 0 end) | median | round1 | tostring),
      ($runs | map((.report.counters.raft_messages // 0) / .report.elapsed_s) | median | round1 | tostring),
      ($runs | map(if (.report.counters.raft_batches // 0) > 0 then .report.counters.raft_messages / .report.counters.raft_batches else 0 end) | median | round1 | tostring),
      ($runs | map(.report.errors_total) | add | tostring)
    ] | "| " + join(" | ") + " |"
  ' "$raw"
  echo
  echo "Raw reports (one JSON object per run, \`zongheng bench --json\` under \`report\`): [$(basename "$raw")]($(basename "$raw"))."
} >"$stem.md"
log "wrote $stem.md"
cat "$stem.md"
