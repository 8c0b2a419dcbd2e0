"""`logs follow` defects from issue 9 item 9, each against a real OpenSSH sshd.

No timing is asserted: where the defect was a delay, the test sets the delay's cause (the
rotation drain wait) far beyond the follow's deadline, so the old behaviour times out.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from dataclasses import replace

import asyncssh
import pytest
from follow_helpers import DONE, append, fast_options, lines, read, until
from test_cli_logs import cli_args

from comfyfleet.errors import HostKeyError, RemotePathError, UsageError
from comfyfleet.logstream import FollowOptions, follow
from comfyfleet.logstream.core import MAX_LINE_BYTES


def patient_drain(timeout: float = 15.0) -> FollowOptions:
    """A drain wait (60 s) longer than the deadline: only noticing the new file can finish."""
    options = fast_options(timeout=timeout)
    return replace(options, tuning=replace(options.tuning, rotate_wait=60.0))


async def test_new_file_after_rename_rotation_is_followed_without_the_drain_wait(
    target_for, remote_log, tmp_path
):
    out = tmp_path / "local.log"
    append(remote_log, lines(0, 20))
    task = asyncio.create_task(follow(target_for(remote_log), patient_drain()))
    await until(lambda: read(out) == lines(0, 20), what="first batch")
    with remote_log.open("ab") as old:  # the writer keeps its handle across the rename
        os.rename(remote_log, remote_log.with_suffix(".log.1"))
        old.write(lines(20, 40))  # the old file's last lines, then the writer moves on
    append(remote_log, lines(40, 60) + DONE)
    result = await task
    assert result.outcome == "complete", result.message
    assert read(out) == lines(0, 60) + DONE
    assert result.rotations == 1


async def test_old_file_is_drained_while_the_new_one_is_still_empty(
    target_for, remote_log, tmp_path
):
    # logrotate `create`: the new file exists (empty) before the daemon reopens its log.
    out = tmp_path / "local.log"
    append(remote_log, lines(0, 20))
    task = asyncio.create_task(follow(target_for(remote_log), patient_drain()))
    await until(lambda: read(out) == lines(0, 20), what="first batch")
    with remote_log.open("ab") as old:
        os.rename(remote_log, remote_log.with_suffix(".log.1"))
        remote_log.write_bytes(b"")
        for i in range(20, 60):
            old.write(lines(i, i + 1))
            old.flush()
            await asyncio.sleep(0.005)
    await until(lambda: read(out) == lines(0, 60), what="the old file's late lines")
    append(remote_log, lines(60, 80) + DONE)
    result = await task
    assert result.outcome == "complete", result.message
    assert read(out) == lines(0, 80) + DONE


async def test_two_rotations_and_a_copytruncate_in_a_row(target_for, remote_log, tmp_path):
    out = tmp_path / "local.log"
    append(remote_log, lines(0, 10))
    task = asyncio.create_task(follow(target_for(remote_log), patient_drain(timeout=20)))
    expected = lines(0, 10)
    for n, start in enumerate((10, 20)):
        await until(lambda e=expected: read(out) == e, what=f"batch before rotation {n}")
        os.rename(remote_log, remote_log.with_suffix(f".log.{n + 1}"))
        append(remote_log, lines(start, start + 10))
        expected += lines(start, start + 10)
    await until(lambda: read(out) == expected, what="batch before the copytruncate")
    with remote_log.open("r+b") as fh:
        fh.truncate(0)
    append(remote_log, lines(30, 40) + DONE)
    result = await task
    assert result.outcome == "complete", result.message
    assert read(out) == lines(0, 40) + DONE
    assert (result.rotations, result.truncations) == (2, 1)


async def test_a_directory_as_path_fails_at_once(target_for, tmp_path):
    remote_dir = tmp_path / "remote-dir"
    remote_dir.mkdir()
    (remote_dir / "provision.log").write_bytes(lines(0, 3))
    with pytest.raises(RemotePathError, match="is a directory, not a regular file") as caught:
        await follow(target_for(remote_dir), fast_options(timeout=60))
    assert isinstance(caught.value, UsageError)  # bad invocation: exit 2
    assert read(tmp_path / "local.log") == b""


async def test_a_fifo_as_path_fails_at_once(target_for, tmp_path):
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    with pytest.raises(RemotePathError, match="fifo"):
        await follow(target_for(fifo), fast_options(timeout=60))


def test_cli_exits_2_for_a_directory_path(sshd, tmp_path):
    remote_dir = tmp_path / "remote-dir"
    remote_dir.mkdir()
    argv = cli_args(sshd, remote_dir, tmp_path / "local.log", "--timeout", "60s")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "is a directory, not a regular file" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)  # still exactly one document
    assert "not a regular file" in json.dumps(doc)


async def test_known_host_key_of_another_type_is_refused_at_once(sshd, target_for, remote_log):
    append(remote_log, DONE)
    other = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    kind, blob = other.export_public_key().decode().split()[:2]
    sshd.known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")  # server: ed25519
    for accept in (False, True):
        with pytest.raises(HostKeyError, match="does not match"):
            await follow(
                target_for(remote_log, accept_new_host_key=accept), fast_options(timeout=60)
            )


async def test_a_matching_key_beside_another_type_still_connects(sshd, target_for, remote_log):
    append(remote_log, DONE)
    other = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    kind, blob = other.export_public_key().decode().split()[:2]
    with sshd.known_hosts.open("a") as fh:
        fh.write(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    result = await follow(target_for(remote_log), fast_options(timeout=20))
    assert result.outcome == "complete"


async def test_a_long_line_arrives_in_pieces_of_exactly_max_line_bytes(
    target_for, remote_log, tmp_path
):
    long_line = bytes(range(33, 126)) * (3 * MAX_LINE_BYTES // 93 + 100)  # > 3 MiB
    remote_log.write_bytes(long_line + b"\n" + DONE)  # one write: one big remote chunk
    result = await follow(target_for(remote_log), fast_options())
    assert result.outcome == "complete"
    pieces = read(tmp_path / "local.log").split(b"\n")[:-2]
    assert b"".join(pieces) == long_line
    assert [len(p) for p in pieces[:-1]] == [MAX_LINE_BYTES] * (len(pieces) - 1)
    assert 0 < len(pieces[-1]) <= MAX_LINE_BYTES
