#!/usr/bin/env bash
# Runs the real-partition nemesis test: three zongheng members, each in a
# network namespace of its own, with the leader cut off from its peers while
# clients keep writing through it and through the others; the history is
# then judged for linearizability.
#
#   scripts/partition-test.sh              # skips (exit 0) without root or ip netns
#   ZONGHENG_REQUIRE_NETNS=1 scripts/partition-test.sh   # fails instead of skipping
#
# Everything the run creates is named after a tag of this script's PID
# (namespaces "<tag>-hub", "<tag>-client", "<tag>-n1".."<tag>-n3"; addresses
# 172.31.x.y exist only inside them). The test removes them itself, also
# when it fails; the trap below removes whatever an interrupted run left:
# it SIGKILLs, by PID, the processes inside those namespaces (only the
# members this run started live there) and deletes the namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

skip() {
  if [[ "${ZONGHENG_REQUIRE_NETNS:-0}" == 1 ]]; then
    echo "partition test cannot run: $1" >&2
    exit 1
  fi
  echo "SKIPPED: partition test: $1"
  exit 0
}

[[ $(id -u) -eq 0 ]] || skip "needs root to create network namespaces"
command -v ip >/dev/null || skip "ip (iproute2) not found"
ip netns list >/dev/null 2>&1 || skip "ip netns is not usable here"
command -v etcdctl >/dev/null || skip "etcdctl not found (apt-get install etcd-client)"

tag="zhs$$"
export ZONGHENG_NETNS_TAG="$tag"

cleanup() {
  local ns pid
  for ns in $(ip netns list | awk '{print $1}' | grep "^${tag}-" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null || true); do
      echo "cleanup: kill -9 $pid (left in $ns)"
      kill -9 "$pid" 2>/dev/null || true
    done
    echo "cleanup: ip netns del $ns"
    ip netns del "$ns" || true
  done
}
# On INT/TERM, stop the test run (its own process group, started below):
# the test process dies, its members die with it (PR_SET_PDEATHSIG), and
# `cleanup` removes the namespaces.
runner=""
on_signal() {
  if [[ -n "$runner" ]]; then
    kill -TERM -- "-$runner" 2>/dev/null || true
    wait "$runner" 2>/dev/null || true
  fi
  exit 130
}
trap cleanup EXIT
trap on_signal INT TERM

set -m # the background job gets a process group of its own
ZONGHENG_REQUIRE_NETNS=1 cargo test -p zongheng --test process_nemesis -- \
  --ignored --exact partition_isolated_leader_netns --nocapture &
runner=$!
set +m
wait "$runner"
