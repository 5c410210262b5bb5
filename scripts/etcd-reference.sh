#!/usr/bin/env bash
# Runs the process-test scenarios against a real etcd 3.4 (Debian's
# etcd-server and etcd-client) to show the scenarios themselves are sound,
# and prints where etcd's etcdctl transcript was written.
#
#   scripts/etcd-reference.sh            # reference runs only
#   ZONGHENG_PROCESS_TESTS=1 scripts/etcd-reference.sh   # and zongheng beside them
#
# Installs the packages when run as root and they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "etcd or etcdctl missing: apt-get install etcd-server etcd-client" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
etcd --version | sed -n 1p
etcdctl version | sed -n 1p

# `--include-ignored` runs the etcd_* reference scenarios of process_faults;
# etcdctl_compat always runs its etcd side when etcd is installed.
cargo test -p zongheng --test etcdctl_compat --test process_faults -- --include-ignored --nocapture
echo "transcripts: $(ls target/tmp/etcdctl_compat/*.transcript)"
