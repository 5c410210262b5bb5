#!/usr/bin/env bash
# zongheng vs etcd, side by side on this machine, in one run.
#
# Starts a 3-member etcd (Debian's etcd-server, 3.4) and a 3-node zongheng
# cluster on loopback with equivalent settings (fsync on every commit, which
# is both servers' default; heartbeat 100 ms, election timeout 1000 ms),
# runs each scenario of `zongheng bench` against both alternately
# (etcd, zongheng, etcd, zongheng, ... for --rounds rounds), samples each
# server's RSS and CPU time after every run, and writes a markdown table of
# medians and ratios (zongheng / etcd) to bench/results/<date>-<hash>.md,
# with every run's JSON report next to it (<date>-<hash>.jsonl).
#
# Usage: bench/compare.sh [--rounds N] [--duration 10s] [--quick]
#                         [--scenarios a,b,...] [--out DIR] [--keep]
#                         [--no-build | --binary PATH [--commit REV]]
# See bench/README.md. Every process this script starts is stopped on exit
# (by PID); it never touches processes it did not start.
set -euo pipefail
cd "$(dirname "$0")/.."
repo_root=$PWD
command_line="bench/compare.sh $*"

rounds=3
duration=10s
quick=false
keep=false
build=true
binary=""
commit=HEAD
out_dir=bench/results
only_scenarios=""
etcd_base_port=23379
zongheng_base_port=24379

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while (($#)); do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --quick) quick=true; shift ;;
    --scenarios) only_scenarios=$2; shift 2 ;;
    --out) out_dir=$2; shift 2 ;;
    --keep) keep=true; shift ;;
    --no-build) build=false; shift ;;
    --binary) binary=$2; build=false; shift 2 ;;
    --commit) commit=$2; shift 2 ;;
    --etcd-base-port) etcd_base_port=$2; shift 2 ;;
    --zongheng-base-port) zongheng_base_port=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
if $quick; then
  rounds=1
  duration=2s
fi
[[ "$rounds" =~ ^[1-9][0-9]?$ ]] || { echo "--rounds must be 1 to 99" >&2; exit 2; }

# The scenarios: name, then `zongheng bench` arguments. Each run is bounded
# by --duration; write scenarios use 8-byte keys and 256-byte values.
scenarios=(
  "put-seq|put --clients 1 --conns 1 --target-leader"
  "put-16|put --clients 16 --conns 3"
  "put-64|put --clients 64 --conns 3"
  "range-l-64|range --consistency l --clients 64 --conns 3 --prefill 1000"
  "range-s-64|range --consistency s --clients 64 --conns 3 --prefill 1000"
  "txn-put-16|txn-put --clients 16 --conns 3"
  "watch-100|watch --watchers 100 --watch-streams 10 --put-rate 100 --conns 3"
  "lease-16|lease --clients 16 --conns 3"
)

log() { echo "== $*" >&2; }

# --- tools --------------------------------------------------------------------

etcd_pids() {
  local proc
  for proc in /proc/[0-9]*; do
    if [[ "$(cat "$proc/comm" 2>/dev/null)" == etcd ]]; then
      echo "${proc#/proc/}"
    fi
  done
}

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v jq >/dev/null || missing+=(jq)
if ((${#missing[@]})); then
  log "installing ${missing[*]} (apt-get)"
  etcd_before=" $(etcd_pids | tr '\n' ' ') "
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # Debian's etcd-server may start a service on install; stop only an etcd
  # that was not running before this install.
  for pid in $(etcd_pids); do
    if [[ "$etcd_before" != *" $pid "* ]]; then
      log "stopping etcd pid $pid started by the package install"
      kill "$pid" || true
    fi
  done
fi

if $build; then
  log "building zongheng (release)"
  cargo build --release -p zongheng --quiet
fi

# --- clusters -----------------------------------------------------------------

work=$(mktemp -d /tmp/zongheng-compare-XXXXXX)
# A private copy: a rebuild in this checkout during the run must not change
# the binary between runs.
mkdir -p "$work/bin"
cp "${binary:-$repo_root/target/release/zongheng}" "$work/bin/zongheng"
zongheng=$work/bin/zongheng
pids=()
cleanup() {
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
  if $keep; then
    echo "kept $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_cluster KIND BASE_PORT: member i (0..2) has client port BASE+10i and
# peer port BASE+10i+1. Sets cluster_endpoints; adds the PIDs to pids and
# member_pids[KIND].
declare -A member_pids=([etcd]="" [zongheng]="")
cluster_endpoints=""
start_cluster() {
  local kind=$1 base=$2 i name client peer initial="" endpoints=""
  for i in 0 1 2; do
    peer=$((base + 10 * i + 1))
    initial+="${kind:0:1}$((i + 1))=http://127.0.0.1:$peer,"
  done
  initial=${initial%,}
  for i in 0 1 2; do
    name="${kind:0:1}$((i + 1))"
    client=$((base + 10 * i))
    peer=$((client + 1))
    for port in "$client" "$peer"; do
      port_free "$port" || { echo "port $port is in use; pick another --$kind-base-port" >&2; exit 1; }
    done
    local args=(--name "$name" --data-dir "$work/$kind/$name"
      --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client"
      --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer"
      --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token "compare-$kind-$$"
      --heartbeat-interval 100 --election-timeout 1000)
    mkdir -p "$work/$kind"
    if [[ $kind == etcd ]]; then
      env -u ETCDCTL_API etcd "${args[@]}" >"$work/$kind/$name.log" 2>&1 &
    else
      env NO_COLOR=1 "$zongheng" node "${args[@]}" >"$work/$kind/$name.log" 2>&1 &
    fi
    pids+=($!)
    member_pids[$kind]+="$! "
    endpoints+="http://127.0.0.1:$client,"
  done
  cluster_endpoints=${endpoints%,}
}

# wait_ready ENDPOINTS: every member answers a linearizable read (bounded).
wait_ready() {
  local endpoint deadline=$((SECONDS + 60))
  for endpoint in ${1//,/ }; do
    until "$zongheng" kv get compare-readiness --endpoints "$endpoint" --command-timeout 2s >/dev/null 2>&1; do
      ((SECONDS < deadline)) || { echo "cluster at $1 not ready after 60 s; logs in $work" >&2; keep=true; exit 1; }
      sleep 0.2
    done
  done
}

clk_tck=$(getconf CLK_TCK)
# sample KIND: {"rss_kb":[...],"cpu_ticks":N} over the members of KIND.
sample() {
  local pid rss ticks=0 list=""
  for pid in ${member_pids[$1]}; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    list+="${rss:-0},"
    # utime and stime are fields 14 and 15; the command name (field 2) may
    # hold spaces, so count from after its closing parenthesis.
    ticks=$((ticks + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
  done
  echo "{\"rss_kb\":[${list%,}],\"cpu_ticks\":$ticks}"
}

log "starting etcd (ports from $etcd_base_port) and zongheng (ports from $zongheng_base_port) in $work"
start_cluster etcd "$etcd_base_port"
etcd_endpoints=$cluster_endpoints
start_cluster zongheng "$zongheng_base_port"
zongheng_endpoints=$cluster_endpoints
wait_ready "$etcd_endpoints"
wait_ready "$zongheng_endpoints"
log "both clusters ready"

# --- runs ---------------------------------------------------------------------

date_utc=$(date -u +%Y-%m-%d)
git_hash=$(git rev-parse --short "$commit")
mkdir -p "$out_dir"
stem="$out_dir/$date_utc-$git_hash"
$quick && stem+="-quick"
raw="$stem.jsonl"
: >"$raw"

started_at=$(date -u +%H:%M:%S)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for entry in "${scenarios[@]}"; do
  name=${entry%%|*}
  bench_args=${entry#*|}
  if [[ -n "$only_scenarios" && ",$only_scenarios," != *",$name,"* ]]; then
    continue
  fi
  for round in $(seq "$rounds"); do
    for kind in etcd zongheng; do
      endpoints=$etcd_endpoints
      [[ $kind == zongheng ]] && endpoints=$zongheng_endpoints
      before=$(sample "$kind")
      # shellcheck disable=SC2086 # bench_args is a list of words
      report=$("$zongheng" bench $bench_args --duration "$duration" --endpoints "$endpoints" --json) || {
        echo "bench $name failed against $kind; logs in $work" >&2
        keep=true
        exit 1
      }
      after=$(sample "$kind")
      jq -c -n --arg system "$kind" --arg scenario "$name" --argjson round "$round" \
        --arg args "$bench_args --duration $duration" \
        --argjson before "$before" --argjson after "$after" --argjson clk "$clk_tck" \
        --argjson report "$report" \
        '{system: $system, scenario: $scenario, round: $round, args: $args,
          rss_kb: $after.rss_kb, cpu_s: (($after.cpu_ticks - $before.cpu_ticks) / $clk),
          report: $report}' >>"$raw"
      log "$(printf '%-11s round %d %-8s %9.1f ops/s  p50 %7.3f ms  p99 %8.3f ms  errors %d  rss %s kB' \
        "$name" "$round" "$kind" "$(jq .ops_per_s <<<"$report")" "$(jq .latency_ms.p50 <<<"$report")" \
        "$(jq .latency_ms.p99 <<<"$report")" "$(jq .errors_total <<<"$report")" \
        "$(jq -r '.rss_kb | map(tostring) | join("/")' <<<"$after")")"
    done
  done
done
finished_at=$(date -u +%H:%M:%S)

# --- the result file ----------------------------------------------------------

# jq helpers: medians, number formatting, ratios, runs grouped by scenario
# in the order they ran.
jq_prelude='
def median: map(select(. != null)) | sort | length as $n
  | if $n == 0 then null elif $n % 2 == 1 then .[($n - 1) / 2] else (.[$n / 2 - 1] + .[$n / 2]) / 2 end;
def fmt: if . == null then "-" elif . >= 100 then (. * 10 | round / 10 | tostring)
  else (. * 1000 | round / 1000 | tostring) end;
def ratio($a; $b): if $a == null or $b == null or $a == 0 then "-" else ($b / $a * 100 | round / 100 | tostring) + "×" end;
def scenario_groups: . as $runs
  | reduce (.[].scenario) as $s ([]; if any(.[]; . == $s) then . else . + [$s] end)
  | map(. as $s | $runs | map(select(.scenario == $s)));
'

data_fs=$(df -T "$work" | awk 'NR == 2 {print $1 " (" $2 ")"}')
cpu_model=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
memory=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
dirty=$(git status --porcelain --untracked-files=no | wc -l)

{
  echo "# zongheng vs etcd: $date_utc, commit $git_hash"
  echo
  echo "Command: \`$command_line\` (rounds $rounds, $duration per run; $started_at to $finished_at UTC)."
  echo
  echo "- Machine: $(nproc) cores ($cpu_model), $memory RAM, kernel $(uname -r)."
  echo "- Data dirs: $data_fs, under $(dirname "$work")."
  echo "- Load average before the run: $load_before; after it: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine shares the cores)."
  if [[ -n "$binary" ]]; then
    built="binary $binary, given as built from $git_hash"
  else
    built="built from this checkout at $git_hash$( ((dirty)) && echo ", whose work tree had $dirty modified tracked files" || true)"
  fi
  echo "- Versions: $(etcd --version | head -1); $("$zongheng" --version) ($built); $(rustc --version)."
  echo "- Both clusters: 3 members on loopback, fsync on every commit (both defaults), heartbeat 100 ms,"
  echo "  election timeout 1000 ms, default snapshot settings. **The load generator (\`zongheng bench\`)"
  echo "  and all six servers share the machine's cores**, so a server that uses less CPU leaves more to"
  echo "  the others and to the client."
  echo "- Each scenario ran against etcd, then zongheng, alternately, $rounds round(s); the table shows"
  echo "  medians over rounds. Ratio = zongheng / etcd (above 1 is better for ops/s; below 1 is better"
  echo "  for latency, RSS and CPU). RSS is the largest member's VmRSS after the run; CPU is the servers'"
  echo "  user+system time during the run, per 1000 successful operations."
  echo "- Write scenarios: 8-byte keys, 256-byte values, random keys in 100000. Range scenarios read one"
  echo "  key of 1000 prefilled. \`watch-100\`: latency from a put to its delivery to the last of 100"
  echo "  watchers (10 streams), 100 puts/s. \`lease-16\`: grant + 1 keepalive + revoke per operation."
  echo
  echo "| scenario | bench args | etcd ops/s | zongheng ops/s | ratio | etcd p50 ms | zongheng p50 ms | ratio | etcd p99 ms | zongheng p99 ms | ratio | errors etcd / zongheng |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  jq -r -s "$jq_prelude"'
  scenario_groups[]
  | .[0].scenario as $name | .[0].args as $args
  | map(select(.system == "etcd")) as $e
  | map(select(.system == "zongheng")) as $z
  | ($e | map(.report.ops_per_s) | median) as $eo | ($z | map(.report.ops_per_s) | median) as $zo
  | ($e | map(.report.latency_ms.p50) | median) as $e50 | ($z | map(.report.latency_ms.p50) | median) as $z50
  | ($e | map(.report.latency_ms.p99) | median) as $e99 | ($z | map(.report.latency_ms.p99) | median) as $z99
  | "| \($name) | `\($args)` | \($eo | fmt) | \($zo | fmt) | \(ratio($eo; $zo)) | \($e50 | fmt) | \($z50 | fmt) | \(ratio($e50; $z50)) | \($e99 | fmt) | \($z99 | fmt) | \(ratio($e99; $z99)) | \($e | map(.report.errors_total) | add) / \($z | map(.report.errors_total) | add) |"' "$raw"
  echo
  echo "Resources (medians over rounds):"
  echo
  echo "| scenario | etcd RSS MB | zongheng RSS MB | ratio | etcd CPU s / 1k ops | zongheng CPU s / 1k ops | ratio |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  jq -r -s "$jq_prelude"'
  def rss: .rss_kb | max / 1024;
  def cpu: if .report.ops > 0 then .cpu_s / .report.ops * 1000 else null end;
  scenario_groups[]
  | .[0].scenario as $name
  | map(select(.system == "etcd")) as $e
  | map(select(.system == "zongheng")) as $z
  | ($e | map(rss) | median) as $er | ($z | map(rss) | median) as $zr
  | ($e | map(cpu) | median) as $ec | ($z | map(cpu) | median) as $zc
  | "| \($name) | \($er | fmt) | \($zr | fmt) | \(ratio($er; $zr)) | \($ec | fmt) | \($zc | fmt) | \(ratio($ec; $zc)) |"' "$raw"
  echo
  echo "Watch fan-out (\`watch-100\`), per-delivery latency (every watcher, ms, medians over rounds):"
  echo
  jq -r -s "$jq_prelude"'
    map(select(.scenario == "watch-100")) | group_by(.system) | .[]
    | "- \(.[0].system): delivery p50 \(map(.report.phases.delivery.p50) | median), p99 \(map(.report.phases.delivery.p99) | median); last-watcher p99 \(map(.report.latency_ms.p99) | median); events missing \(map(.report.counters.events_missing // 0) | add)"' "$raw"
  echo
  echo "Errors seen (all runs):"
  echo
  jq -r -s '[.[] | .system as $s | .scenario as $n | .report.errors[] | "- \($s) \($n): \(.count) × \(.code): \(.message)"] | if length == 0 then "- none" else .[] end' "$raw"
  echo
  echo "Raw reports (one JSON object per run, \`zongheng bench --json\` schema \`zongheng-bench/1\` under \`report\`):"
  echo "[$(basename "$raw")]($(basename "$raw"))."
} >"$stem.md"

log "wrote $stem.md and $raw"
cat "$stem.md"
