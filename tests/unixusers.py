"""Unix users as 'rented machines' for the fleet's SSH tests: each has its own home and
``~/.ssh/authorized_keys`` (the pool's key), and is killed and deleted at teardown."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class LoginUser:
    """A Unix user made by :func:`make_user`."""

    user: str
    uid: int
    gid: int
    home: Path


def make_user(homes: Path, public_key: Path, prefix: str) -> LoginUser:
    """A new user with its home under ``homes`` and ``public_key`` as its authorized key."""
    user = f"{prefix}{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["useradd", "--create-home", "--base-dir", str(homes), "--shell", "/bin/sh",
         "--password", "*", user],
        check=True, capture_output=True,
    )  # fmt: skip
    entry = pwd.getpwnam(user)
    home = Path(entry.pw_dir)
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    shutil.copy(public_key, ssh_dir / "authorized_keys")
    for p in (ssh_dir, ssh_dir / "authorized_keys"):
        os.chown(p, entry.pw_uid, entry.pw_gid)
    return LoginUser(user, entry.pw_uid, entry.pw_gid, home)


def processes_of(uid: int) -> list[psutil.Process]:
    """Every process running as ``uid``."""
    found = []
    for p in psutil.process_iter(["uids"]):
        uids = p.info["uids"]
        if uids is not None and uids.real == uid:
            found.append(p)
    return found


def remove_user(user: str, uid: int) -> None:
    """Kill every process of the user (detached provisions, ComfyUIs), then delete it."""
    for _ in range(50):
        procs = processes_of(uid)
        if not procs:
            break
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=2)
    subprocess.run(["userdel", "--remove", user], capture_output=True)
