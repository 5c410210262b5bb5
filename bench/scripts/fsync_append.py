#!/usr/bin/env python3
"""Latency of a 400-byte pwrite + fdatasync at the end of a log file, three ways.

Usage: bench/scripts/fsync_append.py append|falloc|zero [DIR] [COUNT]

  append  the file grows with every write (its size changes: the fsync must
          also commit the new size and blocks);
  falloc  the file is preallocated with posix_fallocate (what the Raft log's
          segments do, `zongheng_storage::wal`);
  zero    the file is preallocated by writing zeros.

Run several at once to see concurrent fsyncs on one disk share it. Prints
p50/p90/p99 in microseconds. The file is removed at the end.
"""
import os
import sys
import time

mode = sys.argv[1]
directory = sys.argv[2] if len(sys.argv) > 2 else "/tmp"
count = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
path = os.path.join(directory, f"fsync-append-{mode}-{os.getpid()}")
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
size = 64 << 20
if mode == "falloc":
    os.posix_fallocate(fd, 0, size)
    os.fsync(fd)
elif mode == "zero":
    block = b"\0" * (1 << 20)
    for _ in range(size >> 20):
        os.write(fd, block)
    os.fsync(fd)
elif mode != "append":
    sys.exit(f"unknown mode {mode!r}: append, falloc or zero")
record = b"x" * 400
offset = 0
latencies = []
try:
    for _ in range(count):
        start = time.perf_counter()
        os.pwrite(fd, record, offset)
        offset += len(record)
        os.fdatasync(fd)
        latencies.append((time.perf_counter() - start) * 1e6)
finally:
    os.close(fd)
    os.unlink(path)
latencies.sort()
print(mode, "p50", int(latencies[count // 2]), "p90", int(latencies[count * 9 // 10]),
      "p99", int(latencies[count * 99 // 100]), "us")
