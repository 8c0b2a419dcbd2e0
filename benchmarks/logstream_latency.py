"""Benchmark `comfyfleet logs follow` on loopback through a real sshd (not a timed test).

Measures, with the follower running as the real CLI in its own process:
  * write → arrival-in-LOCAL latency p50/p99 at 100 and 1,000 lines/s,
  * the same at 200 lines/s through two rename rotations and a copytruncate,
  * reconnects: at 200 lines/s every connection is cut (sshd children SIGKILLed) 5 times;
    the time from each cut to the arrival of the first line written after it,
  * throughput for a burst of 100 MB of log lines,
  * the follower's CPU use (user+system, % of one core) at 100 lines/s.

Run:  python benchmarks/logstream_latency.py  [--seconds 10] [--burst-mb 100]
Targets (issue 5): p99 <= 250 ms, >= 20 MB/s burst, < 5 % of one core at 100 lines/s;
(issue 9): p99 <= 100 ms at 200 lines/s through two rename rotations and a copytruncate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sshd import SshServer, wait_until

LINE = 100  # bytes per line, newline included (a typical provisioning log line)


class Arrivals(threading.Thread):
    """Tails LOCAL from this process and notes when each line appeared (1 ms polling)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.size = 0
        self.latencies_ns: dict[str, list[int]] = {}
        #: (sent, arrived) in ns per phase, in arrival order
        self.times_ns: dict[str, list[tuple[int, int]]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.path.exists():
            time.sleep(0.001)
        buf = b""
        with self.path.open("rb") as fh:
            while not self.stop.is_set():
                data = fh.read()
                if not data:
                    time.sleep(0.001)
                    continue
                now = time.time_ns()
                self.size += len(data)
                buf += data
                cut = buf.rfind(b"\n") + 1
                for line in buf[:cut].split(b"\n")[:-1]:
                    if line.startswith(b"lat "):
                        _, phase, sent = line.split(b" ", 3)[:3]
                        self.latencies_ns.setdefault(phase.decode(), []).append(now - int(sent))
                        self.times_ns.setdefault(phase.decode(), []).append((int(sent), now))
                buf = buf[cut:]


def pace(log_fd: int, phase: str, rate: int, seconds: float) -> None:
    """Append ``rate`` timestamped lines per second for ``seconds`` (absolute schedule)."""
    start = time.monotonic()
    for i in range(int(rate * seconds)):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        head = f"lat {phase} {time.time_ns()} {i} ".encode()
        os.write(log_fd, head.ljust(LINE - 1, b".") + b"\n")


def _line(phase: str, i: int) -> bytes:
    return f"lat {phase} {time.time_ns()} {i} ".encode().ljust(LINE - 1, b".") + b"\n"


def pace_rotating(path: Path, rate: int, seconds: float, caught_up: Callable[[int], bool]) -> int:
    """Like :func:`pace` for phase ``rotate``, with a writer that rotates its own log: a
    rename rotation at 1/4 and 1/2 of the way (it reopens the path), a copytruncate at 3/4.
    Returns the bytes written (all of them must reach LOCAL).

    Bytes truncated away before any read are lost to every tail, so the copytruncate waits
    until ``caught_up(bytes written so far)``; the lines keep the times they were written."""
    n = int(rate * seconds)
    events = {n // 4: "rename", n // 2: "rename", 3 * n // 4: "copytruncate"}
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    written, rotations = 0, 0
    start = time.monotonic()
    try:
        for i in range(n):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            kind = events.get(i)
            if kind == "rename":
                rotations += 1
                os.rename(path, path.with_name(f"{path.name}.{rotations}"))
                os.close(fd)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            elif kind == "copytruncate":
                wait_until(lambda n=written: caught_up(n), 30, 0.001, what="LOCAL to catch up")
                shutil.copyfile(path, path.with_name(f"{path.name}.copy"))
                os.truncate(fd, 0)
            written += os.write(fd, _line("rotate", i))
    finally:
        os.close(fd)
    return written


def pace_with_cuts(log_fd: int, sshd: SshServer, rate: int, seconds: float, cuts: int) -> list[int]:
    """Phase ``cut``: :func:`pace` at ``rate``, killing every connection ``cuts`` times at
    even intervals. Returns when each cut happened (ns, same clock as the lines)."""
    n = int(rate * seconds)
    at = {n * (k + 1) // (cuts + 1) for k in range(cuts)}
    cut_times: list[int] = []
    start = time.monotonic()
    for i in range(n):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if i in at:
            wait_until(lambda: sshd.connections(), 30, what="the follower to reconnect")
            cut_times.append(time.time_ns())
            sshd.kill_connections()
        os.write(log_fd, _line("cut", i))
    return cut_times


def first_after(times: list[tuple[int, int]], cut: int) -> float:
    """Milliseconds from ``cut`` to the arrival of the first line written after it."""
    return min(arrived for sent, arrived in times if sent >= cut) / 1e6 - cut / 1e6


def remote_cpu(sshd: SshServer) -> float:
    """CPU seconds of the remote side so far: per-connection sshd, the sh loop and the
    coreutils it ran (reaped children are counted in their parent's children_* times)."""
    total = 0.0
    for conn in sshd.connections():
        try:
            procs = [conn, *conn.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system + t.children_user + t.children_system
    return total


def pct(values: list[int], q: float) -> float:
    """The q-quantile in milliseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each rate phase")
    ap.add_argument("--burst-mb", type=int, default=100)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="logstream-bench-") as tmp:
        root = Path(tmp)
        (root / "sshd").mkdir()
        sshd = SshServer(root / "sshd")
        sshd.start()
        remote, local = root / "provision.log", root / "local.log"
        log_fd = os.open(remote, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(log_fd, b"warm-up\n")
        argv = [
            sys.executable, "-c", "from comfyfleet.cli import main; main()", "logs", "follow",
            "--host", "127.0.0.1", "--port", str(sshd.port), "--user", sshd.user,
            "--key", str(sshd.client_key), "--known-hosts", str(sshd.known_hosts),
            "--path", str(remote), "--output", str(local), "--timeout", "30m", "--json",
        ]  # fmt: skip
        follower = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc = psutil.Process(follower.pid)
        watcher = Arrivals(local)
        watcher.start()
        try:
            wait_until(lambda: watcher.size >= 8, 30, what="the follower to start")
            rows = []

            cpu0, rcpu0, t0 = proc.cpu_times(), remote_cpu(sshd), time.monotonic()
            pace(log_fd, "100", 100, args.seconds)
            cpu1, rcpu1, t1 = proc.cpu_times(), remote_cpu(sshd), time.monotonic()
            cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (t1 - t0) * 100
            rcpu = (rcpu1 - rcpu0) / (t1 - t0) * 100
            pace(log_fd, "1000", 1000, args.seconds / 2)
            expected = os.fstat(log_fd).st_size
            wait_until(lambda: watcher.size >= expected, 30, what="the rate phases to arrive")
            for phase in ("100", "1000"):
                lat = watcher.latencies_ns[phase]
                rows.append(
                    (f"latency at {phase} lines/s", f"{len(lat)} lines",
                     f"p50 {pct(lat, 0.5):.1f} ms", f"p99 {pct(lat, 0.99):.1f} ms",
                     f"max {max(lat) / 1e6:.1f} ms")
                )  # fmt: skip
            rows.append(("follower CPU at 100 lines/s", "", f"{cpu:.2f} % of one core", "", ""))
            rows.append(
                ("remote side CPU at 100 lines/s", "", f"{rcpu:.2f} % of one core",
                 "(sshd + sh loop)", "")
            )  # fmt: skip

            # 200 lines/s while the writer rotates its log: rename, rename, copytruncate.
            base = expected
            written = pace_rotating(remote, 200, args.seconds, lambda n: watcher.size >= base + n)
            expected += written  # LOCAL gets every line of every file once
            wait_until(lambda: watcher.size >= expected, 60, what="the rotation phase")
            lat = watcher.latencies_ns["rotate"]
            rows.append(
                ("200 lines/s, 2 renames + copytrunc.", f"{len(lat)} lines",
                 f"p50 {pct(lat, 0.5):.1f} ms", f"p99 {pct(lat, 0.99):.1f} ms",
                 f"max {max(lat) / 1e6:.1f} ms")
            )  # fmt: skip
            os.close(log_fd)
            log_fd = os.open(remote, os.O_WRONLY | os.O_APPEND)

            # 200 lines/s while every connection is cut 5 times.
            size0 = os.fstat(log_fd).st_size
            cuts = pace_with_cuts(log_fd, sshd, 200, args.seconds, 5)
            expected += os.fstat(log_fd).st_size - size0
            wait_until(lambda: watcher.size >= expected, 60, what="the reconnect phase")
            gaps = sorted(first_after(watcher.times_ns["cut"], c) for c in cuts)
            lat = watcher.latencies_ns["cut"]
            rows.append(
                ("first line after a cut (5 cuts)", f"{len(cuts)} cuts",
                 f"median {gaps[len(gaps) // 2]:.0f} ms", f"max {gaps[-1]:.0f} ms",
                 "")
            )  # fmt: skip
            rows.append(
                ("200 lines/s with 5 cuts, all lines", f"{len(lat)} lines",
                 f"p50 {pct(lat, 0.5):.1f} ms", f"p99 {pct(lat, 0.99):.1f} ms",
                 f"max {max(lat) / 1e6:.1f} ms")
            )  # fmt: skip

            # Quiet, then sparse lines: the remote loop has slowed to its idle poll.
            cpu0, rcpu0, t0 = proc.cpu_times(), remote_cpu(sshd), time.monotonic()
            time.sleep(args.seconds / 2)
            cpu1, rcpu1, t1 = proc.cpu_times(), remote_cpu(sshd), time.monotonic()
            idle = max(0.0, cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (t1 - t0) * 100
            ridle = max(0.0, rcpu1 - rcpu0) / (t1 - t0) * 100
            size0 = os.fstat(log_fd).st_size
            pace(log_fd, "sparse", 1, args.seconds * 2)
            expected += os.fstat(log_fd).st_size - size0
            wait_until(lambda: watcher.size >= expected, 30, what="the sparse lines")
            lat = watcher.latencies_ns["sparse"]
            rows.append(
                ("latency at 1 line/s (idle poll)", f"{len(lat)} lines",
                 f"p50 {pct(lat, 0.5):.1f} ms", f"p99 {pct(lat, 0.99):.1f} ms",
                 f"max {max(lat) / 1e6:.1f} ms")
            )  # fmt: skip
            rows.append(
                ("CPU while the log is quiet", "", f"follower {idle:.2f} %",
                 f"remote {ridle:.2f} %", "")
            )  # fmt: skip

            chunk = b"".join(
                f"burst {i:08d} ".encode().ljust(LINE - 1, b"#") + b"\n" for i in range(10_000)
            )  # 1 MB of lines
            total = args.burst_mb * len(chunk)
            expected += total
            b0 = time.monotonic()
            for _ in range(args.burst_mb):
                os.write(log_fd, chunk)
            written = time.monotonic() - b0
            wait_until(lambda: watcher.size >= expected, 300, 0.001, what="the burst")
            b1 = time.monotonic()
            rows.append(
                (f"burst of {total / 1e6:.0f} MB", f"{(b1 - b0):.2f} s",
                 f"{total / 1e6 / (b1 - b0):.1f} MB/s", f"(writing took {written:.2f} s)", "")
            )  # fmt: skip
            os.write(log_fd, b"PROVISIONING COMPLETE\n")
            code = follower.wait(60)
            rows.append(("follower exit code", str(code), "", "", ""))
        finally:
            watcher.stop.set()
            if follower.poll() is None:
                follower.kill()
            sshd.stop()

    print(f"logs follow benchmark: loopback sshd, {os.cpu_count()} CPUs, {LINE}-byte lines")
    print(f"| {'measure':32} | {'n / time':12} | {'result':22} | {'':22} | {'':14} |")
    print(f"|{'-' * 34}|{'-' * 14}|{'-' * 24}|{'-' * 24}|{'-' * 16}|")
    for r in rows:
        print(f"| {r[0]:32} | {r[1]:12} | {r[2]:22} | {r[3]:22} | {r[4]:14} |")


if __name__ == "__main__":
    main()
