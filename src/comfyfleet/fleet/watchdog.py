"""The dead-man's switch that runs on a Vast.ai instance (standalone: stdlib only, Python 3.8+).

Started by the control plane (:mod:`comfyfleet.fleet.deadman`; ``--detach``: it forks into its
own session once it has read its input and prints its pid), it reads one JSON
object on stdin (never argv, never the environment of ``ps``)::

    {"api_url": "https://console.vast.ai", "instance_id": "123", "api_key": "…",
     "heartbeat": "/root/.comfyfleet-agent/heartbeat", "timeout": 1800, "check_every": 30}

and destroys its own instance (``DELETE /api/v0/instances/{id}/`` with the instance's own
key) once the heartbeat file has not been touched for ``timeout`` seconds. ``instance_id``
and ``api_key`` fall back to ``CONTAINER_ID`` / ``CONTAINER_API_KEY`` of PID 1's environment
(Vast injects both). The key is never written to the log.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request


def _pid1_env(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return out


def _running(pidfile):
    """The pid of a live watchdog recorded in ``pidfile``, else 0."""
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip() or 0)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return pid if b"watchdog" in f.read() else 0
    except (OSError, ValueError):
        return 0


def _log(path, line):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(path, "a", encoding="utf-8") as f:
        f.write(stamp + " " + line + "\n")


def _destroy(api_url, instance_id, api_key):
    """HTTP status of our own destroy call (0: no answer)."""
    req = urllib.request.Request(
        api_url.rstrip("/") + "/api/v0/instances/" + instance_id + "/",
        data=b"{}",
        method="DELETE",
        headers={"Authorization": "Bearer " + api_key, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0


def main():
    cfg = json.loads(sys.stdin.read())
    env = _pid1_env(cfg.get("pid1_environ", "/proc/1/environ"))
    instance_id = str(cfg.get("instance_id") or env.get("CONTAINER_ID") or "").strip()
    api_key = str(cfg.get("api_key") or env.get("CONTAINER_API_KEY") or "").strip()
    heartbeat = cfg["heartbeat"]
    timeout = float(cfg["timeout"])
    check_every = float(cfg.get("check_every", min(30.0, timeout / 4)))
    log = cfg.get("log", heartbeat + ".log")
    if not instance_id.isdigit() or not api_key:
        _log(log, "no instance id or key (stdin or PID 1's CONTAINER_ID/CONTAINER_API_KEY): off")
        return 2
    pidfile = heartbeat + ".pid"
    running = _running(pidfile)
    if running:  # armed again (a restarted or new leader): one watchdog per instance
        print(f"watchdog started (pid {running}, already running)", flush=True)
        return 0
    with open(heartbeat, "a"):
        os.utime(heartbeat)  # the clock starts now
    if "--detach" in sys.argv[1:]:
        # detached like provision: our own session, no terminal, outliving the SSH channel
        pid = os.fork()
        if pid:
            print(f"watchdog started (pid {pid})", flush=True)
            return 0
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    _log(log, f"watching {heartbeat}: destroy instance {instance_id} after {timeout:g}s")
    delay = check_every
    while True:
        time.sleep(delay)
        try:
            age = time.time() - os.stat(heartbeat).st_mtime
        except OSError:
            age = timeout + 1  # the heartbeat is gone: nobody will renew it
        if age <= timeout:
            delay = check_every
            continue
        status = _destroy(cfg["api_url"], instance_id, api_key)
        _log(log, f"no heartbeat for {age:.0f}s: destroy instance {instance_id}: HTTP {status}")
        if status in (200, 404):  # destroyed, or already gone
            return 0
        delay = min(max(delay * 2, 1.0), 300.0)  # the API is down or busy: retry, not forever fast


if __name__ == "__main__":
    sys.exit(main())
