"""How a failure is told: groups flattened once, a full disk mapped once, bugs named."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from comfyfleet.errors import (
    DISK_FULL_PREFIX,
    CommandFailed,
    DiskFull,
    InstallError,
    disk_errors,
    disk_full,
    first_error,
    internal_error,
    known_error,
    leaves,
)


async def _nested_failure(leaf: BaseException) -> BaseException:
    """What provision sees when a task inside a task inside a TaskGroup fails."""

    async def inner() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(asyncio.sleep(10))  # cancelled by the failure: not reported
            tg.create_task(_raise(leaf))

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(inner())
            tg.create_task(asyncio.sleep(10))
    except BaseExceptionGroup as group:
        return group
    raise AssertionError("no failure")


async def _raise(exc: BaseException) -> None:
    await asyncio.sleep(0)
    raise exc


async def test_a_nested_group_flattens_to_the_one_error_it_stands_for():
    error = InstallError("comfyui requirements: command failed (exit 1)")
    group = await _nested_failure(error)

    assert isinstance(group, ExceptionGroup) and isinstance(group.exceptions[0], ExceptionGroup)
    assert leaves(group) == [error]
    assert first_error(group) is error
    assert known_error(group) is error


def test_a_full_disk_wins_over_the_failures_it_caused(tmp_path: Path):
    enospc = OSError(errno.ENOSPC, "No space left on device")
    group = ExceptionGroup("x", [InstallError("pip died"), ExceptionGroup("y", [enospc])])

    assert first_error(group) is enospc
    mapped = known_error(group, tmp_path)
    assert isinstance(mapped, DiskFull)
    assert mapped.message.startswith(f"{DISK_FULL_PREFIX} ")
    assert f" free under {tmp_path} (no space left on device)" in mapped.message


def test_a_quota_is_a_full_disk_too_and_other_os_errors_are_not(tmp_path: Path):
    quota = disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path)
    assert quota is not None and quota.message.endswith("(disk quota exceeded)")
    assert disk_full(OSError(errno.EACCES, "Permission denied"), tmp_path) is None
    assert known_error(PermissionError(errno.EACCES, "denied"), tmp_path) is None


def test_a_git_fetch_that_ran_out_of_space_is_a_full_disk_not_a_bad_repo(tmp_path: Path):
    # install/git.py reports a failed fetch as InstallError, raised while handling CommandFailed.
    try:
        try:
            raise CommandFailed(["git", "fetch"], 128, "fatal: No space left on device")
        except CommandFailed as exc:
            raise InstallError(f"comfyui: cannot fetch x: {exc.output_tail}") from None
    except InstallError as wrapped:
        failure = wrapped
    group = ExceptionGroup("x", [InstallError("pip died"), failure])

    assert first_error(group) is failure
    mapped = known_error(group, tmp_path)
    assert isinstance(mapped, DiskFull)
    assert mapped.message.startswith(f"{DISK_FULL_PREFIX} ")
    assert "(a command said: no space left on device)" in mapped.message
    other = CommandFailed(["git", "fetch"], 128, "fatal: repository not found")
    assert known_error(other, tmp_path) is other


def test_disk_errors_maps_only_a_full_disk(tmp_path: Path):
    with pytest.raises(DiskFull), disk_errors(tmp_path):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(IsADirectoryError), disk_errors(tmp_path):
        raise IsADirectoryError(errno.EISDIR, "Is a directory")


def test_a_bug_is_named_by_its_class_and_first_line():
    group = ExceptionGroup("x", [KeyError("missing\nsecond line")])
    assert internal_error(group) == "internal error (KeyError: 'missing\\nsecond line')"
    assert internal_error(RuntimeError("first\nsecond")) == "internal error (RuntimeError: first)"
    assert internal_error(RuntimeError()) == "internal error (RuntimeError)"
    assert known_error(group) is None
