"""What the SSH executor runs: the OpenSSH client and rsync as subprocesses, and the sh scripts on the box.

Scripts run as ``sh -s`` with the script on stdin, so the remote login shell (bash, zsh, fish...) never parses
them. Exit code 255 from ssh (or a call that hangs past its timeout) is a lost connection: the caller may retry.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import shlex
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ExecutorError
from agent.executors.base import JOB_ENV, TrainTask

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

RSYNC_LOST = {10, 12, 30, 35, 255}
"""rsync exit codes that mean the connection broke (socket I/O, protocol stream, timeouts, ssh failed)."""
PRIVATE = "umask 077\n"
"""Prefix of every script on a box: what the jobs write there (code, datasets, models) is this user's only."""


FALLBACK_REQUIREMENTS = ["numpy>=1.24", "platformdirs>=4", "torch>=2.2", "transformers>=4.40", "deepspeed>=0.14",
                         "peft>=0.10", "safetensors>=0.4"]  # fmt: skip
ENV_MARK = "REPOPILOT-ENV "
# Run on the box, in <work>/src, by the Python that is to train: what it lacks, or its versions and GPUs.
ENV_CHECK = f"""
import importlib, importlib.util, json, os, sys
need = ("torch", "transformers", "deepspeed", "peft", "safetensors")
info = {{"python": "%d.%d" % sys.version_info[:2], "missing": [m for m in need if importlib.util.find_spec(m) is None]}}
if sys.version_info < (3, 10):
    info["missing"].append("Python >= 3.10")
if not info["missing"]:
    torch, transformers = (importlib.import_module(m) for m in ("torch", "transformers"))
    if os.path.isdir("agent"):  # run in src/: the copied code imports with this Python (numpy, platformdirs...)
        import agent.cli, pipelines.finetune.run
    info.update(torch=torch.__version__, transformers=transformers.__version__, gpus=torch.cuda.device_count())
print({ENV_MARK!r} + json.dumps(info))
"""
DETACH = """
import os, sys
try:
    os.setsid()
except OSError:
    if os.fork():
        os._exit(0)
    os.setsid()
os.execv("/bin/sh", ["sh", sys.argv[1]])
"""


class ConnectionLost(ExecutorError):
    """The box did not answer over SSH (refused, timed out, dropped); the work there may still run."""


@dataclass(frozen=True)
class SshTarget:
    """How to reach one box: the ``ssh`` options every call (and rsync) uses."""

    host: str
    port: int
    user: str
    key_file: str
    known_hosts: Path
    control_dir: Path | None
    connect_timeout_s: float = 10.0
    session: str = ""
    """Part of the control socket's name: executors with different sessions do not share a connection."""

    @property
    def login(self) -> str:
        return self.user or getpass.getuser()

    @property
    def label(self) -> str:
        return f"{self.login}@{self.host}:{self.port}"

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def options(self) -> list[str]:
        opts = {
            "BatchMode": "yes",
            "ConnectTimeout": str(max(1, round(self.connect_timeout_s))),
            "ServerAliveInterval": "5",
            "ServerAliveCountMax": "3",
            "StrictHostKeyChecking": "accept-new",
            "UserKnownHostsFile": str(self.known_hosts),
            "LogLevel": "ERROR",
        }
        if self.key_file:
            opts["IdentitiesOnly"] = "yes"
        if self.control_dir is not None:
            key = hashlib.sha1(f"{self.label}:{self.key_file}:{self.session}".encode()).hexdigest()[:16]
            opts |= {"ControlMaster": "auto", "ControlPath": str(self.control_dir / key), "ControlPersist": "60"}
        cmd = ["ssh", "-T", "-p", str(self.port)]
        if self.key_file:
            cmd += ["-i", str(Path(self.key_file).expanduser())]
        for key, value in opts.items():
            cmd += ["-o", f"{key}={value}"]
        return cmd

    def run(self, script: str, timeout: float = 60.0) -> str:
        """Run a POSIX sh script on the box; its stdout. ConnectionLost or ExecutorError when it fails."""
        return self.run_raw(script, timeout).decode(errors="replace")

    def run_raw(self, script: str, timeout: float = 60.0) -> bytes:
        cmd = [*self.options(), "--", self.destination, "sh -s"]
        try:
            proc = subprocess.run(cmd, input=(PRIVATE + script).encode(), capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ConnectionLost(f"{self.label} did not answer within {timeout:.0f} s.") from None
        except FileNotFoundError:
            raise ExecutorError("The `ssh` client is not installed here. Install OpenSSH (openssh-client).") from None
        stderr = proc.stderr.decode(errors="replace")
        if proc.returncode == 255:
            raise ConnectionLost(self.explain(stderr))
        if proc.returncode != 0:
            raise ExecutorError(f"a command on {self.label} failed (exit {proc.returncode}): {_last_line(stderr)}")
        return proc.stdout

    def stream(self, script: str, on_line: Callable[[str], None]) -> int:
        """Run a script, passing each output line (stdout and stderr) to ``on_line``; its exit code."""
        cmd = [*self.options(), "--", self.destination, "sh -s"]
        with subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        ) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(PRIVATE + script)
            proc.stdin.close()
            lines = []
            for line in proc.stdout:
                lines.append(line)
                on_line(line.rstrip("\n"))
        if proc.returncode == 255:
            raise ConnectionLost(self.explain("".join(lines[-5:])))
        return proc.returncode

    def rsync(self, args: list[str], timeout: float | None = None) -> dict[str, int]:
        """rsync with this target's ssh; the transfer statistics (files and bytes moved)."""
        cmd = ["rsync", "-e", shlex.join(self.options()), "--stats", "--chmod=go-rwx", *args]  # internal code
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ConnectionLost(f"copying files with {self.label} did not finish within {timeout:.0f} s.") from None
        except FileNotFoundError:
            raise ExecutorError("`rsync` is not installed here. Install it (e.g. apt-get install rsync).") from None
        stderr = proc.stderr.decode(errors="replace")
        if "No space left on device" in stderr:
            raise ExecutorError(
                f"a disk ran out of space while copying files with {self.label}: {_last_line(stderr)}. "
                "Free some space (on the box, or here for a fetched model), then retry the job."
            )
        if proc.returncode in RSYNC_LOST:
            raise ConnectionLost(self.explain(stderr))
        if proc.returncode != 0:
            raise ExecutorError(
                f"copying files with {self.label} failed (rsync exit {proc.returncode}): {stderr[-600:]}"
            )
        return rsync_stats(proc.stdout.decode(errors="replace"))

    def remote(self, path: str) -> str:
        """``path`` on the box in rsync's ``[user@]host:path`` syntax."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{path}" if self.user else f"{host}:{path}"

    def close(self) -> None:
        """End the shared connection (a later call opens a new one)."""
        if self.control_dir is None:
            return
        subprocess.run(
            [*self.options(), "-O", "exit", "--", self.destination], capture_output=True, timeout=15, check=False
        )

    def explain(self, stderr: str) -> str:
        """What an ssh failure means for the user, and what to do about it."""
        where = f"the [[gpu_boxes]] entry for {self.label}"
        if "Could not resolve hostname" in stderr:
            return f"The host name {self.host!r} does not resolve. Check `host` in {where}."
        if "Connection refused" in stderr:
            return (
                f"Nothing accepts SSH connections at {self.label} (connection refused). Check that the box is on, "
                f"that sshd runs there, and `host`/`port` in {where}."
            )
        if any(s in stderr for s in ("timed out", "No route to host", "Network is unreachable")):
            return (
                f"{self.label} does not answer ({_last_line(stderr)}). Check the network (VPN?) and that the box is on."
            )
        if "Permission denied" in stderr or "Too many authentication failures" in stderr:
            key = self.key_file or "of the SSH agent (or ~/.ssh/id_*)"
            return (
                f"{self.label} refused the SSH key {key}. Add its public key to ~{self.login}/.ssh/authorized_keys "
                f"on the box, or set `key_file` in {where}."
            )
        if "Host key verification failed" in stderr or "IDENTIFICATION HAS CHANGED" in stderr:
            return (
                f"The host key of {self.label} is not the one seen before. If the box was reinstalled, remove its "
                f"line from {self.known_hosts}; otherwise the connection may be intercepted."
            )
        return f"SSH to {self.label} failed: {_last_line(stderr) or 'the connection was closed'}."


def control_dir_for(local_work_dir: Path) -> Path:
    """A folder for ssh's control sockets whose paths stay under the 107-byte socket path limit.

    A socket is ``<folder>/<16 hex digits>``, and ssh first binds it with a 17-character suffix.
    """
    folder = local_work_dir / "cm"
    if len(str(folder)) > 60:
        digest = hashlib.sha1(str(local_work_dir).encode()).hexdigest()[:10]
        folder = Path(tempfile.gettempdir()) / f"repopilot-ssh-{os.getuid()}-{digest}"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = folder.lstat()  # in /tmp another user could have made it first: use it only if it is ours alone
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise ExecutorError(
            f"The folder for SSH control sockets {folder} is not a private folder of this user. Remove it (or set "
            "a shorter data_dir so that the sockets stay inside it) and retry."
        )
    return folder


def rsync_stats(stdout: str) -> dict[str, int]:
    """Counts from ``rsync --stats`` (files seen, files transferred, bytes of file data sent)."""
    fields = {
        "files": r"Number of files: ([\d,.]+)",
        "regular_files": r"Number of regular files transferred: ([\d,.]+)",
        "literal_bytes": r"Literal data: ([\d,.]+)",
        "file_bytes": r"Total transferred file size: ([\d,.]+)",
    }
    stats = {}
    for key, pattern in fields.items():
        match = re.search(pattern, stdout)
        stats[key] = int(re.sub(r"[,.]", "", match.group(1))) if match else 0
    return stats


def q(value: object) -> str:
    return shlex.quote(str(value))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


@dataclass
class RemoteState:
    """One look at the remote job: whether it runs, how it ended, and what its files gained since the offsets."""

    alive: bool
    pid: str
    exit_code: int | None
    has_result: bool
    progress: bytes
    log: bytes
    log_size: int
    more: bool


class RemoteRun:
    """Where one task's files live on the box, and the sh scripts that start, watch and stop its job."""

    def __init__(self, work: str, task: TrainTask) -> None:
        self.work, self.job_id = work, task.job_id
        self.src = f"{work}/src"
        self.dataset = f"{work}/datasets/{task.dataset_dir.name}"
        self.run_dir = f"{work}/runs/{task.run_dir.name}"
        self.job = f"{work}/jobs/{task.job_id}"

    def prelude(self) -> str:
        """Variables, ``pid`` from the pid file, and ``alive PID``: PID runs and is this job (not a reused pid)."""
        return (
            f"W={q(self.work)}; J={q(self.job)}; R={q(self.run_dir)}\n"
            'alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null && { [ ! -r "/proc/$1/environ" ] || '
            f"tr '\\0' '\\n' <\"/proc/$1/environ\" | grep -qx {q(f'{JOB_ENV}={self.job_id}')}; }}; }}\n"
            'pid=$(cat "$J.pid" 2>/dev/null)\n'
        )

    def start_script(self, python: str, fresh: list[str], resume: list[str]) -> str:
        """Start the job in its own session (``fresh``, or ``resume`` once the run has a config), unless it runs.

        Prints ``RUNNING pid``, ``STARTED pid`` or ``NOSTART`` and the log's last lines. The job writes
        ``jobs/<id>.pid`` (its process group), appends to ``jobs/<id>.log`` and leaves ``jobs/<id>.exit``.
        """
        job = (
            f"J={q(self.job)}\n"
            'echo $$ >"$J.pid.tmp" && mv -f "$J.pid.tmp" "$J.pid"\n'
            f"cd {q(self.src)} || exit 1\n"
            "trap : TERM INT HUP\n"  # outlive the group's SIGTERM to record the exit code
            f"if [ -f {q(self.run_dir + '/config.json')} ]; then {shlex.join(resume)} &\n"
            f"else {shlex.join(fresh)} &\nfi\n"
            'child=$!\nwhile :; do wait "$child"; code=$?; kill -0 "$child" 2>/dev/null || break; done\n'
            'echo "$code" >"$J.exit.tmp" && mv -f "$J.exit.tmp" "$J.exit"\n'
        )
        env = f"{JOB_ENV}={self.job_id} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH={q(self.src)}"
        return (
            "{\n" + self.prelude() + 'if alive "$pid"; then echo "RUNNING $pid"; exit 0; fi\n'
            '[ -f "$R/config.json" ] || rm -rf "$R"\n'  # a set-up that did not finish: nothing worth keeping
            'rm -f "$J.pid" "$J.exit"\n'
            f'printf "%s" {q(job)} >"$J.sh"\n'  # one quoted word: no value can end it early (no heredoc)
            f'{env} {q(python)} -c {q(DETACH)} "$J.sh" </dev/null >>"$J.log" 2>&1 &\n'
            'i=0; while [ ! -s "$J.pid" ] && [ $i -lt 150 ]; do sleep 0.1; i=$((i + 1)); done\n'
            'if [ -s "$J.pid" ]; then echo "STARTED $(cat "$J.pid")"; else echo NOSTART; tail -n 20 "$J.log"; fi\n'
            "} </dev/null"
        )

    def poll_script(self, progress_offset: int, log_offset: int, cap: int) -> str:
        """A ``STATE`` line, then up to ``cap`` new bytes of progress.jsonl and of the log."""
        return (
            "{\n" + self.prelude() + 'if alive "$pid"; then a=1; else a=0; fi\n'
            'code=$(cat "$J.exit" 2>/dev/null); [ -f "$R/result.json" ] && res=1 || res=0\n'
            'ps=$(wc -c 2>/dev/null <"$R/progress.jsonl" || echo 0); ls=$(wc -c 2>/dev/null <"$J.log" || echo 0)\n'
            f"pn=$((ps - {progress_offset})); [ $pn -gt {cap} ] && pn={cap}; [ $pn -lt 0 ] && pn=0\n"
            f"ln=$((ls - {log_offset})); [ $ln -gt {cap} ] && ln={cap}; [ $ln -lt 0 ] && ln=0\n"
            'printf "STATE %s %s %s %s %s %s %s %s\\n" $a "${pid:--}" "${code:--}" $res $ps $pn $ls $ln\n'
            f'[ $pn -gt 0 ] && tail -c +{progress_offset + 1} "$R/progress.jsonl" | head -c $pn\n'
            f'[ $ln -gt 0 ] && tail -c +{log_offset + 1} "$J.log" | head -c $ln\n'
            "true\n} </dev/null"
        )

    @staticmethod
    def parse_poll(out: bytes, progress_offset: int, log_offset: int) -> RemoteState:
        header, _, body = out.partition(b"\n")
        _, alive, pid, code, res, psize, pn, lsize, ln = header.decode().split()
        pn_, ln_ = int(pn), int(ln)
        return RemoteState(
            alive=alive == "1", pid=pid, exit_code=None if code == "-" else int(code), has_result=res == "1",
            progress=body[:pn_], log=body[pn_ : pn_ + ln_], log_size=int(lsize),
            more=progress_offset + pn_ < int(psize) or log_offset + ln_ < int(lsize),
        )  # fmt: skip

    def stop_script(self, grace_s: float) -> str:
        """SIGTERM the job's process group, SIGKILL it after ``grace_s``; prints GONE, STOPPED or KILLED."""
        ticks = max(1, int(grace_s * 5))
        return (
            "{\n" + self.prelude() + 'alive "$pid" || { echo GONE; exit 0; }\nkill -TERM -"$pid" 2>/dev/null\n'
            f'i=0; while kill -0 -"$pid" 2>/dev/null && [ $i -lt {ticks} ]; do sleep 0.2; i=$((i + 1)); done\n'
            'if kill -0 -"$pid" 2>/dev/null; then kill -KILL -"$pid"; echo KILLED; else echo STOPPED; fi\n} </dev/null'
        )


def training_requirements(root: Path) -> list[str]:
    """What the box's venv needs: the project's dependencies and its ``train`` extra."""
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return list(FALLBACK_REQUIREMENTS)
    return [*project.get("dependencies", []), *project.get("optional-dependencies", {}).get("train", [])]


def install_script(work: str, requirements: list[str]) -> str:
    """Shell that creates ``<work>/venv`` with python3 -m venv and pip-installs ``requirements`` into it."""
    venv = f"{work}/venv"
    return (
        "{\nPY3=$(command -v python3) || { echo 'python3 is not installed on the box: install python3 and "
        "python3-venv'; exit 3; }\n"
        f'if [ ! -x {q(venv + "/bin/python")} ]; then "$PY3" -m venv {q(venv)} 2>&1 || {{ rm -rf {q(venv)}; '
        "echo 'python3 -m venv failed: install python3-venv (apt-get install python3-venv)'; exit 3; }; fi\n"
        f"{q(venv + '/bin/python')} -m pip install --disable-pip-version-check --progress-bar off "
        f"{' '.join(q(r) for r in requirements)} 2>&1\n}} </dev/null"
    )
