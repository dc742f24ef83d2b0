"""A real OpenSSH server on 127.0.0.1 for the remote-executor tests: its own host key, user key and config.

``SshBox.drop()`` kills the server and the sshd process of every session it serves (as a network outage
would: the client sees the connection die); ``start()`` brings it back on the same port with the same keys.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from agent.config import GpuBox
from tests.services import free_port, require

SSHD = "/usr/sbin/sshd"  # sshd refuses to re-exec itself unless started by an absolute path


def sshd_available() -> bool:
    return Path(SSHD).exists() and bool(shutil.which("ssh")) and bool(shutil.which("rsync"))


class SshBox:
    """``sshd -D -e`` with key authentication for the current user, listening on 127.0.0.1:``port``."""

    def __init__(self, folder: Path) -> None:
        require(sshd_available(), "sshd, ssh and rsync (openssh-server, openssh-client, rsync)")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host_key = folder / "host_ed25519"
        self.user_key = folder / "id_ed25519"
        for key in (self.host_key, self.user_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        (folder / "authorized_keys").write_text(self.user_key.with_suffix(".pub").read_text())
        self.config = folder / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {folder / 'sshd.pid'}",
                    f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                    "StrictModes no",
                    "UsePAM no",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "MaxStartups 100",
                    "MaxSessions 100",
                    "LogLevel VERBOSE",
                    # One thread per training: on a small shared CI machine, torch's spinning OpenMP threads
                    # competing with other processes slow a tiny run down many times over.
                    "SetEnv OMP_NUM_THREADS=1",
                    "",
                ]
            )
        )
        self.log = folder / "sshd.log"
        self.proc: subprocess.Popen | None = None
        self.user = getpass.getuser()
        self.work_dir = folder / "box-work"
        """The default ``work_dir`` of the box's entries (where the "remote" files are, as seen from here)."""

    def start(self) -> None:
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation folder
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited with code {self.proc.returncode}:\n{self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                if sock.recv(4).startswith(b"SSH-"):
                    return
            time.sleep(0.1)
        raise AssertionError(f"sshd did not listen on {self.port}:\n{self.log.read_text()[-2000:]}")

    def drop(self) -> None:
        """Kill the server and its session processes: every open connection dies, as in a network outage.

        Only sshd processes get SIGKILL; the commands they ran see their connection gone and end on their own
        (killing them too would skip their clean-up, e.g. a login shell's lock files).
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            with contextlib.suppress(ProcessLookupError, OSError):
                if pid == self.proc.pid or Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                    os.kill(pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        self.drop()
        self.proc = None

    def gpu_box(self, **fields) -> GpuBox:
        """A ``[[gpu_boxes]]`` entry for this server (``fields`` override the defaults)."""
        defaults = {"name": "loopback", "kind": "ssh", "host": "127.0.0.1", "user": self.user, "port": self.port,
                    "key_file": str(self.user_key), "work_dir": str(self.work_dir)}  # fmt: skip
        return GpuBox(**{**defaults, **fields})


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children first found, grandchildren after)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found
