"""`logs follow` against a real OpenSSH sshd: every line once, in order, whatever happens."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from follow_helpers import DONE, append, fast_options, lines, read, until

from comfyfleet.errors import HostKeyError
from comfyfleet.logstream import follow


async def write_slowly(path: Path, data: bytes, pieces: int, pause: float = 0.005) -> None:
    """Append ``data`` in ``pieces`` writes that split lines anywhere."""
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        append(path, data[i : i + step])
        await asyncio.sleep(pause)


async def test_steady_stream_arrives_complete_and_in_order(target_for, remote_log, tmp_path):
    remote_log.write_bytes(b"")
    body = lines(0, 500)
    task = asyncio.create_task(follow(target_for(remote_log), fast_options()))
    await write_slowly(remote_log, body, 100)
    append(remote_log, DONE)
    result = await task
    assert result.outcome == "complete"
    assert read(tmp_path / "local.log") == body + DONE
    assert (result.lines, result.bytes) == (501, len(body + DONE))
    assert result.last_line == "PROVISIONING COMPLETE"


async def test_partial_lines_are_held_until_their_newline(target_for, remote_log, tmp_path):
    out = tmp_path / "local.log"
    check = "✅".encode()
    remote_log.write_bytes(b"first\nsecond half of a " + check[:2])  # a UTF-8 char split too
    task = asyncio.create_task(follow(target_for(remote_log), fast_options()))
    await until(lambda: read(out) == b"first\n", what="the complete line")
    # A bounded observation window: the torn line must not show up in LOCAL meanwhile.
    for _ in range(30):
        await asyncio.sleep(0.01)
        assert read(out) == b"first\n"
    append(remote_log, check[2:] + b" line\nFATAL: disk full\n")
    result = await task
    assert result.outcome == "failed"
    assert read(out) == "first\nsecond half of a ✅ line\nFATAL: disk full\n".encode()


async def test_every_connection_killed_mid_stream_several_times(
    sshd, target_for, remote_log, tmp_path
):
    out = tmp_path / "local.log"
    remote_log.write_bytes(b"")
    body = lines(0, 3000)
    task = asyncio.create_task(follow(target_for(remote_log), fast_options()))
    writer = asyncio.create_task(write_slowly(remote_log, body, 600, pause=0.004))
    seen = 0
    for k in range(4):
        # New bytes after a kill prove the follower reconnected; then cut it again.
        await until(lambda seen=seen: len(read(out)) > seen + 1000, what=f"progress {k}")
        assert sshd.kill_connections() >= 1
        seen = len(read(out))
    await writer
    append(remote_log, DONE)
    result = await task
    assert read(out) == body + DONE
    assert result.reconnects >= 4


async def test_sshd_restarted_while_lines_keep_coming(sshd, target_for, remote_log, tmp_path):
    out = tmp_path / "local.log"
    append(remote_log, lines(0, 100))
    task = asyncio.create_task(follow(target_for(remote_log), fast_options()))
    await until(lambda: read(out) == lines(0, 100), what="first batch")
    sshd.stop()
    append(remote_log, lines(100, 200))  # written while sshd is down
    sshd.start()
    append(remote_log, lines(200, 300) + DONE)
    result = await task
    assert read(out) == lines(0, 300) + DONE
    assert result.reconnects >= 1


async def test_rename_rotation_drains_the_old_file_still_being_written(
    target_for, remote_log, tmp_path
):
    out = tmp_path / "local.log"
    append(remote_log, lines(0, 50))
    task = asyncio.create_task(follow(target_for(remote_log), fast_options()))
    await until(lambda: read(out) == lines(0, 50), what="first batch")
    with remote_log.open("ab") as old:  # the writer keeps its handle, as a daemon would
        os.rename(remote_log, remote_log.with_suffix(".log.1"))
        for i in range(50, 100):
            old.write(lines(i, i + 1))
            old.flush()
            await asyncio.sleep(0.002)
    append(remote_log, lines(100, 150) + DONE)  # the new file
    result = await task
    assert read(out) == lines(0, 150) + DONE
    assert result.rotations == 1


async def test_rename_rotation_while_disconnected_still_drains_old_file(
    sshd, target_for, remote_log, tmp_path
):
    out = tmp_path / "local.log"
    append(remote_log, lines(0, 50))
    task = asyncio.create_task(follow(target_for(remote_log), fast_options()))
    await until(lambda: read(out) == lines(0, 50), what="first batch")
    sshd.stop()
    append(remote_log, lines(50, 80))
    os.rename(remote_log, remote_log.with_suffix(".log.1"))
    append(remote_log, lines(80, 120) + DONE)
    sshd.start()
    result = await task
    assert read(out) == lines(0, 120) + DONE
    assert result.rotations == 1


async def test_copytruncate_delivers_old_and_new_lines_once(target_for, remote_log, tmp_path):
    out = tmp_path / "local.log"
    append(remote_log, lines(0, 100))
    task = asyncio.create_task(follow(target_for(remote_log), fast_options()))
    await until(lambda: read(out) == lines(0, 100), what="first batch")
    shutil.copyfile(remote_log, remote_log.with_suffix(".log.1"))
    with remote_log.open("r+b") as fh:
        fh.truncate(0)
    await write_slowly(remote_log, lines(100, 130), 10)
    append(remote_log, DONE)
    result = await task
    assert read(out) == lines(0, 130) + DONE
    assert result.truncations == 1


async def test_truncate_and_refill_beyond_the_old_offset(target_for, remote_log, tmp_path):
    out = tmp_path / "local.log"
    append(remote_log, lines(0, 10))
    task = asyncio.create_task(follow(target_for(remote_log), fast_options()))
    await until(lambda: read(out) == lines(0, 10), what="first batch")
    refill = lines(1000, 1100)  # much longer than what was read: only the head shows it
    with remote_log.open("r+b") as fh:  # same inode, new content, in one go
        fh.truncate(0)
        fh.write(refill + DONE)
    result = await task
    assert read(out) == lines(0, 10) + refill + DONE
    assert result.truncations == 1


async def test_remote_file_absent_at_start_is_waited_for(sshd, target_for, remote_log, tmp_path):
    task = asyncio.create_task(follow(target_for(remote_log), fast_options()))
    await until(lambda: sshd.connections(), what="the follower to connect")
    assert not remote_log.exists()
    append(remote_log, lines(0, 20) + DONE)
    result = await task
    assert read(tmp_path / "local.log") == lines(0, 20) + DONE
    assert result.outcome == "complete"


async def test_unreachable_host_retries_until_the_deadline(target_for, remote_log, sshd):
    sshd.stop()  # nothing listens on the port any more
    result = await follow(target_for(remote_log), fast_options(timeout=1.5))
    assert result.outcome == "timeout"
    assert "within 1.5s" in result.message
    assert "last connection error" in result.message


async def test_changed_host_key_is_refused_even_with_accept_new(sshd, target_for, remote_log):
    append(remote_log, DONE)
    sshd.stop()
    sshd.regenerate_host_key()  # known_hosts still pins the old key
    sshd.start()
    for accept in (False, True):
        with pytest.raises(HostKeyError, match="does not match"):
            await follow(
                target_for(remote_log, accept_new_host_key=accept), fast_options(timeout=10)
            )


async def test_unknown_host_key_needs_accept_new_which_pins_it(sshd, target_for, remote_log):
    append(remote_log, DONE)
    sshd.known_hosts.write_text("")
    with pytest.raises(HostKeyError, match="accept-new-host-key"):
        await follow(target_for(remote_log), fast_options(timeout=10))
    result = await follow(target_for(remote_log, accept_new_host_key=True), fast_options())
    assert result.outcome == "complete"
    pinned = sshd.known_hosts.read_text()
    assert pinned.startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")
    assert pinned.split()[2] == sshd.host_key.with_suffix(".pub").read_text().split()[1]


def _remote_readers(path: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "comfyfleet-logstream" in cmd and str(path) in cmd:
            found.append(p)
    return found


async def test_remote_reader_does_not_outlive_the_connection(
    sshd, target_for, remote_log, tmp_path
):
    append(remote_log, lines(0, 10))
    task = asyncio.create_task(follow(target_for(remote_log), fast_options()))
    await until(lambda: read(tmp_path / "local.log") == lines(0, 10), what="first batch")
    assert _remote_readers(remote_log)
    task.cancel()  # the follower goes away without closing anything politely...
    sshd.kill_connections()  # ...and so does its connection
    await until(lambda: not _remote_readers(remote_log), timeout=0.8, what="readers to exit")


async def test_bounded_remote_sessions_hand_over_without_gaps(target_for, remote_log, tmp_path):
    remote_log.write_bytes(b"")
    body = lines(0, 400)
    options = fast_options()
    options = replace(options, tuning=replace(options.tuning, session_seconds=1))
    task = asyncio.create_task(follow(target_for(remote_log), options))
    await write_slowly(remote_log, body, 200, pause=0.012)  # ~2.5 s: several sessions
    append(remote_log, DONE)
    result = await task
    assert read(tmp_path / "local.log") == body + DONE
    assert result.reconnects == 0  # a new session on the same connection, not a reconnect


async def test_a_silent_link_is_detected_and_replaced(sshd, target_for, remote_log, tmp_path):
    out = tmp_path / "local.log"
    append(remote_log, lines(0, 10))
    options = fast_options()
    options = replace(options, tuning=replace(options.tuning, stall=1.0))
    task = asyncio.create_task(follow(target_for(remote_log), options))
    await until(lambda: read(out) == lines(0, 10), what="first batch")
    frozen = sshd.connections()
    for p in frozen:  # packets stop flowing but nothing is closed: a cut cable
        p.send_signal(signal.SIGSTOP)
    append(remote_log, lines(10, 20) + DONE)
    try:
        result = await task
    finally:
        for p in frozen:
            try:
                p.send_signal(signal.SIGKILL)
                p.send_signal(signal.SIGCONT)
            except psutil.NoSuchProcess:
                pass
    assert read(out) == lines(0, 20) + DONE
    assert result.reconnects == 1


async def test_deleted_and_recreated_file_is_followed_into_the_new_one(
    target_for, remote_log, tmp_path
):
    out = tmp_path / "local.log"
    append(remote_log, lines(0, 10) + b"unterminated")
    task = asyncio.create_task(follow(target_for(remote_log), fast_options()))
    await until(lambda: read(out) == lines(0, 10), what="first batch")
    remote_log.unlink()
    append(remote_log, lines(10, 20) + DONE)
    result = await task
    # The old file can never finish its last line, so it is delivered as it is.
    assert read(out) == lines(0, 10) + b"unterminated\n" + lines(10, 20) + DONE
    assert result.rotations == 1


async def test_many_hosts_in_one_event_loop(sshd, target_for, tmp_path):
    logs = [tmp_path / f"host{i}.log" for i in range(4)]
    for p in logs:
        p.write_bytes(b"")
    targets = [target_for(p, output=tmp_path / f"local{i}.log") for i, p in enumerate(logs)]
    tasks = [asyncio.create_task(follow(t, fast_options())) for t in targets]
    for i in range(50):
        for n, p in enumerate(logs):
            append(p, f"host {n} line {i}\n".encode())
        await asyncio.sleep(0.002)
    for p in logs:
        append(p, DONE)
    results = await asyncio.gather(*tasks)
    assert [r.outcome for r in results] == ["complete"] * 4
    for n in range(4):
        expected = b"".join(f"host {n} line {i}\n".encode() for i in range(50)) + DONE
        assert read(tmp_path / f"local{n}.log") == expected


async def test_remote_reader_exits_when_the_follow_completes(target_for, remote_log, tmp_path):
    append(remote_log, lines(0, 10) + DONE)
    result = await follow(target_for(remote_log), fast_options())
    assert result.outcome == "complete"
    await until(lambda: not _remote_readers(remote_log), timeout=0.8, what="readers to exit")


async def test_shell_startup_noise_on_stdout_is_skipped(sshd, target_for, remote_log, tmp_path):
    # Some images print a banner even for `ssh host command` (from a shell startup file);
    # here sshd itself prints it, including a line that looks like a record.
    sshd.extra_options["ForceCommand"] = (
        "echo 'Welcome to your GPU instance!'; echo 'D 5'; eval \"$SSH_ORIGINAL_COMMAND\""
    )
    sshd.restart()
    append(remote_log, lines(0, 5) + DONE)
    result = await follow(target_for(remote_log), fast_options(timeout=10))
    assert result.outcome == "complete"
    assert read(tmp_path / "local.log") == lines(0, 5) + DONE
