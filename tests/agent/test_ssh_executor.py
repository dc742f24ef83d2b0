"""The SSH executor against a real sshd on 127.0.0.1: the real `repopilot train` runs "remotely" (under a
separate work folder, started over SSH), survives dropped connections and a restarted agent, and is cancelled.

The box is this machine, so the tests can look at the remote files directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.errors import ExecutorError
from agent.executors.base import TrainTask
from agent.executors.ssh import SshExecutor, install_script, training_requirements
from agent.executors.sshutil import PRIVATE, RemoteRun, control_dir_for
from agent.jobs import JobCancelled
from pipelines.dataset.builder import build, update
from pipelines.dataset.config import DatasetConfig, RepoSpec
from pipelines.errors import InputError
from tests.dataset.conftest import Repo
from tests.finetune.conftest import TINY_FAST, events, internal_module
from tests.services import free_port
from tests.sshbox import SshBox

ROOT = Path(__file__).resolve().parents[2]
FAST = [*TINY_FAST, "--launcher", "none"]
LONG = [*FAST, "--logging-steps", "50", "--save-steps", "100000"]


def snapshot(folder: Path, into: Path) -> Path:
    """A frozen copy of the dataset's current version, as the agent trains on (hard links)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    target = into / manifest["dataset_version"]
    files = [s["file"] for shards in manifest["shards"].values() for s in shards]
    for rel in [*files, *(i["file"] for i in manifest["index"]), "stats.json", "manifest.json"]:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(folder / rel, target / rel)
    return target


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two versions of a small dataset; the second adds files, so some shards are new and most are shared."""
    root = tmp_path_factory.mktemp("ssh-data")
    repo = Repo(root / "acme")
    repo.commit({f"jobs/job_{i:02d}.py": internal_module(i) for i in range(40)})
    live = root / "dataset"
    build(live, [RepoSpec("acme", str(repo.path))], DatasetConfig(val_fraction=0.15, near_dup=False, shard_records=8))
    first = snapshot(live, root / "snapshots")
    repo.commit({f"jobs/job_{i:02d}.py": internal_module(i) for i in range(40, 44)})
    update(live)
    return first, snapshot(live, root / "snapshots")


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory):
    server = SshBox(tmp_path_factory.mktemp("sshd"))
    server.start()
    yield server
    for pid_file in (server.work_dir / "jobs").glob("*.pid"):  # leave no training behind
        with contextlib.suppress(ProcessLookupError, ValueError, OSError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    server.stop()


class Reports(list):
    def __call__(self, progress: dict) -> None:
        self.append(progress)

    def messages(self) -> str:
        return "\n".join(str(r.get("message")) for r in self)

    def steps(self) -> list[int]:
        return [r["step"] for r in self if "step" in r]


def executor(box: SshBox, local: Path, **kwargs) -> SshExecutor:
    fields = {"python": sys.executable}
    fields.update(kwargs.pop("box_fields", {}))
    return SshExecutor(box.gpu_box(**fields), local, poll_s=1.0, **kwargs)


def task(tmp: Path, job_id: int, dataset: Path, *args: str) -> TrainTask:
    return TrainTask(job_id, dataset, tmp / "runs" / f"m{job_id}", list(args), log_file=tmp / f"job-{job_id}.log")


def remote_run(box: SshBox, job: TrainTask) -> Path:
    return box.work_dir / "runs" / job.run_dir.name


def remote_pid(box: SshBox, job: TrainTask) -> int:
    return int((box.work_dir / "jobs" / f"{job.job_id}.pid").read_text())


def wait_for(predicate, timeout: float = 180, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def logged_step(run: Path, at_least: int) -> bool:
    return any(e["event"] == "log" and e["step"] >= at_least for e in events(run))


def group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Background:
    """``executor.train`` on a thread; ``result()`` re-raises what it raised."""

    def __init__(self, ex: SshExecutor, job: TrainTask, reports: Reports, is_cancelled=lambda: False) -> None:
        self.value: dict | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(ex, job, reports, is_cancelled), daemon=True)
        self.thread.start()

    def _run(self, ex, job, reports, is_cancelled) -> None:
        try:
            self.value = ex.train(job, reports, is_cancelled)
        except BaseException as exc:
            self.error = exc

    def result(self, timeout: float = 240):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "train() did not return"
        if self.error is not None:
            raise self.error
        return self.value


@pytest.fixture(scope="module")
def first_run(box: SshBox, datasets, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("first")
    ex = executor(box, tmp / "agent-remote")
    job = task(tmp, 1, datasets[0], *FAST, "--max-steps", "30")
    reports = Reports()
    started = time.monotonic()
    result = ex.train(job, reports, lambda: False)
    return ex, job, result, reports, time.monotonic() - started


def test_check_describes_the_ready_box(box: SshBox, tmp_path: Path) -> None:
    line = executor(box, tmp_path, box_fields={"work_dir": str(tmp_path / "fresh-box")}).check()
    assert f"127.0.0.1:{box.port}" in line and "ready" in line and "torch" in line and "0 GPUs" in line


def private(root: Path) -> list[str]:
    """Entries under ``root`` (itself included) that another user could read, write or enter."""
    entries = [root, *root.rglob("*")]
    return [str(p) for p in entries if not p.is_symlink() and p.stat().st_mode & 0o077]


def test_an_open_work_folder_is_made_private(box: SshBox, tmp_path: Path) -> None:
    work = tmp_path / "open-box"
    (work / "datasets" / "old").mkdir(parents=True)
    (work / "datasets" / "old" / "train.jsonl").write_text('{"text": "internal"}\n')
    for path in (work, work / "datasets", work / "datasets" / "old"):
        path.chmod(0o755)
    (work / "datasets" / "old" / "train.jsonl").chmod(0o644)
    line = executor(box, tmp_path / "local", box_fields={"work_dir": str(work)}).check()
    assert "ready" in line
    assert private(work / "datasets") == [] and (work.stat().st_mode & 0o777) == 0o700


def test_a_tiny_training_runs_on_the_box_and_its_result_comes_back(box: SshBox, first_run) -> None:
    ex, job, result, reports, _ = first_run
    run = job.run_dir
    assert result["status"] == "done" and result["steps"] == 30
    # Every path in the result is on this machine, and the files are there.
    assert result["run_dir"] == str(run) and result["model"] == str(run / "model")
    assert result["base_model"] == str(run / "base")
    assert json.loads((run / "result.json").read_text()) == result
    for name in ("model/config.json", "smoke.json", "config.json", "base/config.json", "progress.jsonl"):
        assert (run / name).is_file(), name
    assert not (run / "checkpoints").exists()  # left on the box
    # It really ran there, with the code copied there: the remote run folder and its job files.
    assert (box.work_dir / "src" / "agent" / "cli.py").is_file()
    assert (box.work_dir / "src" / "pipelines" / "finetune" / "run.py").is_file()
    remote = remote_run(box, job)
    assert (remote / "checkpoints").is_dir() and (box.work_dir / "jobs" / "1.exit").read_text().strip() == "0"
    assert json.loads((remote / "config.json").read_text())["args"]["dataset"] == str(
        box.work_dir / "datasets" / job.dataset_dir.name
    )
    # Progress streamed back as it happened.
    steps = reports.steps()
    assert steps == sorted(steps) and steps[-1] == 30 and len(steps) >= 3
    assert "copying dataset" in reports.messages() and "started the training" in reports.messages()
    log = job.log_file.read_text()
    assert "training: step 0 of 30" in log and "model saved to" in log
    # Internal code, on the box and fetched back, is readable by its user only.
    assert [private(box.work_dir / name) for name in ("src", "datasets", "runs", "jobs")] == [[], [], [], []]
    assert private(run) == []
    # Asking again just returns the fetched result, without the box.
    assert ex.train(job, Reports(), lambda: False) == result


def test_a_new_dataset_version_copies_only_what_changed(box: SshBox, datasets, first_run, tmp_path: Path) -> None:
    old, new = datasets
    ex = executor(box, tmp_path / "agent-remote")
    job = task(tmp_path, 2, new, *FAST, "--max-steps", "5")
    result = ex.train(job, Reports(), lambda: False)
    assert result["steps"] == 5 and result["dataset_version"] == new.name
    files = sorted(p.relative_to(new) for p in new.rglob("*") if p.is_file())
    same = [rel for rel in files if (old / rel).is_file() and (old / rel).read_bytes() == (new / rel).read_bytes()]
    assert len(same) >= 3  # shards shared by both versions
    assert ex.last_sync["dataset"]["regular_files"] == len(files) - len(same)
    remote_old, remote_new = box.work_dir / "datasets" / old.name, box.work_dir / "datasets" / new.name
    for rel in same:  # hard links to the copy of the older version: not sent, not stored twice
        assert (remote_new / rel).stat().st_ino == (remote_old / rel).stat().st_ino, rel
    assert ex.last_sync["source"]["regular_files"] == 0  # the code did not change either


def test_a_dropped_connection_does_not_stop_the_job(box: SshBox, datasets, tmp_path: Path) -> None:
    ex = executor(box, tmp_path / "agent-remote", reconnect_timeout_s=120)
    job = task(tmp_path, 3, datasets[0], *LONG, "--max-steps", "1000")
    reports = Reports()
    running = Background(ex, job, reports)
    remote = remote_run(box, job)
    wait_for(lambda: logged_step(remote, 50), what="the first steps on the box")
    pid = remote_pid(box, job)
    box.drop()  # the server and every session: the client's connection dies
    dropped_at = time.time()
    time.sleep(3)
    assert group_alive(pid)  # the training did not notice
    box.start()
    result = running.result()
    assert result["status"] == "done" and result["steps"] == 1000 and (job.run_dir / "model").is_dir()
    assert remote_pid(box, job) == pid
    remote_events = events(remote)
    assert [e["event"] for e in remote_events].count("launch") == 1  # never started again
    assert any(e["event"] == "log" and e["time"] > dropped_at + 3 for e in remote_events)  # ran through the outage
    assert "lost the connection" in reports.messages() and "reconnected" in reports.messages()
    assert reports.steps()[-1] == 1000


def test_a_restarted_agent_reattaches_to_the_running_job(box: SshBox, datasets, tmp_path: Path) -> None:
    local = tmp_path / "agent-remote"
    job = task(tmp_path, 4, datasets[0], *LONG, "--max-steps", "400")
    first_reports = Reports()
    # The agent shuts down while the job runs: it stops following and leaves the job on the box.
    stopping = threading.Event()
    leaving = Background(executor(box, local, detach=lambda: True), job, first_reports, stopping.is_set)
    wait_for(lambda: bool(first_reports.steps()), what="progress from the box")
    stopping.set()
    with pytest.raises(JobCancelled, match="keeps running"):
        leaving.result()
    pid = remote_pid(box, job)
    assert group_alive(pid)
    # A new agent process (a new executor) runs the job again: it follows the same remote process.
    reports = Reports()
    result = executor(box, local).train(job, reports, lambda: False)
    assert result["steps"] == 400 and (job.run_dir / "model").is_dir()
    assert "reattaching" in reports.messages() and "started the training" not in reports.messages()
    assert [e["event"] for e in events(remote_run(box, job))].count("launch") == 1
    assert job.log_file.read_text().count("training: step 0 of 400") == 1  # the log is not copied twice


def test_cancel_stops_the_remote_process_group_and_a_retry_resumes(box: SshBox, datasets, tmp_path: Path) -> None:
    job = task(tmp_path, 5, datasets[0], *LONG, "--max-steps", "600")
    remote = remote_run(box, job)
    cancel = threading.Event()
    running = Background(executor(box, tmp_path / "agent-remote"), job, Reports(), cancel.is_set)
    wait_for(lambda: logged_step(remote, 50), what="the first steps on the box")
    pid = remote_pid(box, job)
    cancel.set()
    with pytest.raises(JobCancelled):
        running.result(timeout=120)
    assert not group_alive(pid)
    # SIGTERM, not SIGKILL: the training saved a checkpoint to resume from.
    stopped = next(e for e in events(remote) if e["event"] == "stopping")["step"]
    assert stopped < 600 and (remote / "checkpoints" / f"checkpoint-{stopped}" / "trainer_state.json").is_file()
    assert not (job.run_dir / "model").exists()
    # Running the job again continues on the box from that checkpoint.
    result = executor(box, tmp_path / "agent-remote").train(job, Reports(), lambda: False)
    assert result["steps"] == 600
    starts = [e["step"] for e in events(remote) if e["event"] == "start"]
    assert starts == [0, stopped]


def test_a_failing_training_reports_the_remote_error(box: SshBox, datasets, tmp_path: Path) -> None:
    job = task(tmp_path, 8, datasets[0], "--base-model", str(tmp_path / "no-such-model"), "--max-steps", "5")
    with pytest.raises(ExecutorError) as caught:
        executor(box, tmp_path / "agent-remote").train(job, Reports(), lambda: False)
    assert caught.value.title == "Training failed"
    assert "ended with code 1" in caught.value.message
    assert f"{tmp_path / 'no-such-model'}' is neither a folder" in caught.value.message  # the CLI's own words


def test_a_full_disk_on_the_box_is_a_clear_error(box: SshBox, datasets, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        ex = executor(box, tmp_path / "agent-remote", box_fields={"work_dir": str(small / "work")})
        with pytest.raises(ExecutorError) as caught:
            ex.train(task(tmp_path, 9, datasets[0], *FAST), Reports(), lambda: False)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
    assert caught.value.title == "Training box problem"
    assert "ran out of space" in caught.value.message and "Free some space" in caught.value.message


def test_an_unreachable_box_is_a_quick_clear_error(box: SshBox, datasets, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    ex = SshExecutor(box.gpu_box(port=port, python=sys.executable), tmp_path)
    started = time.monotonic()
    with pytest.raises(ExecutorError) as caught:
        ex.train(task(tmp_path, 6, datasets[0], *FAST), Reports(), lambda: False)
    assert time.monotonic() - started < 10
    assert caught.value.title == "Training box problem"
    assert f"127.0.0.1:{port}" in caught.value.message and "connection refused" in caught.value.message
    with pytest.raises(ExecutorError, match=f"127.0.0.1:{port}"):
        ex.check()


def test_a_key_the_box_refuses_is_a_clear_error(box: SshBox, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    ex = executor(box, tmp_path, box_fields={"key_file": str(stranger)})
    with pytest.raises(ExecutorError, match="refused the SSH key") as caught:
        ex.check()
    assert str(stranger) in caught.value.message and "authorized_keys" in caught.value.message
    missing = executor(box, tmp_path, box_fields={"key_file": str(tmp_path / "nope")})
    with pytest.raises(ExecutorError, match="does not exist"):
        missing.check()


def test_a_python_without_the_training_stack_says_what_to_install(box: SshBox, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    subprocess.run([shutil.which("python3") or "python3", "-m", "venv", "--without-pip", str(bare)], check=True)
    with pytest.raises(ExecutorError) as caught:
        executor(box, tmp_path, box_fields={"python": str(bare / "bin" / "python")}).check()
    message = caught.value.message
    assert "missing torch, transformers, deepspeed" in message and "-m pip install" in message
    assert "clear `python`" in message
    with pytest.raises(ExecutorError, match="does not exist"):
        executor(box, tmp_path, box_fields={"python": str(tmp_path / "no-python")}).check()


def test_setting_up_the_environment_reports_a_failed_install(box: SshBox, datasets, tmp_path: Path) -> None:
    """The real set-up path (venv + pip on the box), with a requirement pip cannot find (and no index)."""
    work = tmp_path / "fresh-box"
    ex = SshExecutor(
        box.gpu_box(work_dir=str(work)), tmp_path / "agent-remote",
        install_requirements=["--no-index", "repopilot-test-no-such-package"],
    )  # fmt: skip
    assert "set up" in ex.check()  # reachable; the environment comes with the first job
    reports = Reports()
    job = task(tmp_path, 7, datasets[0], *FAST)
    with pytest.raises(ExecutorError, match="Setting up the training environment") as caught:
        ex.train(job, reports, lambda: False)
    assert f"{work}/venv" in caught.value.message and "missing torch" in caught.value.message
    assert (work / "venv" / "bin" / "python").exists()
    assert "installing the training environment" in reports.messages()
    assert "No matching distribution found for repopilot-test-no-such-package" in job.log_file.read_text()


def test_the_install_uses_the_projects_training_requirements() -> None:
    reqs = training_requirements(ROOT)
    assert any(r.startswith("torch") for r in reqs) and any(r.startswith("deepspeed") for r in reqs)
    script = install_script("/srv/box", reqs)
    assert '"$PY3" -m venv /srv/box/venv' in script
    assert "/srv/box/venv/bin/python -m pip install" in script and "'transformers>=4.40'" in script


def test_no_argument_can_end_the_job_script_early(tmp_path: Path) -> None:
    """A training argument with a line break and the old heredoc delimiter stays an argument: nothing after it
    runs as shell on the box."""
    work = tmp_path / "box"
    for name in ("src", "jobs", "runs"):
        (work / name).mkdir(parents=True)
    marker = tmp_path / "injected"
    hostile = f"x\nREPOPILOT_JOB_EOF\ntouch {marker}\n"
    run = RemoteRun(str(work), TrainTask(7, tmp_path / "ds", tmp_path / "runs" / "m7", [], log_file=tmp_path / "l"))
    script = run.start_script(sys.executable, ["echo", hostile], ["echo", hostile])
    started = subprocess.run(["sh", "-s"], input=PRIVATE + script, capture_output=True, text=True, timeout=60)
    assert "STARTED" in started.stdout, started.stdout + started.stderr
    deadline = time.monotonic() + 30
    while not (work / "jobs" / "7.exit").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (work / "jobs" / "7.exit").read_text().strip() == "0"
    assert not marker.exists()
    assert hostile in (work / "jobs" / "7.log").read_text()  # it reached the command whole, as one argument


def test_ssh_options_cannot_hide_in_a_host_or_user(tmp_path: Path) -> None:
    from agent.config import load_config

    path = tmp_path / "config.toml"
    path.write_text('[[gpu_boxes]]\nname = "a"\nkind = "ssh"\nhost = "-oProxyCommand=touch /tmp/x"\nuser = "-l"\n')
    with pytest.raises(InputError) as caught:
        load_config(path)
    assert "gpu_boxes[0].host: must not start with '-'" in caught.value.message
    assert "gpu_boxes[0].user: must not start with '-'" in caught.value.message


def test_control_sockets_only_in_a_folder_of_this_user_alone(tmp_path: Path) -> None:
    long_dir = tmp_path / ("x" * 80)  # too long for socket paths: the sockets go to a folder in /tmp
    first = control_dir_for(long_dir)
    assert (first.stat().st_mode & 0o777) == 0o700 and first.stat().st_uid == os.getuid()
    first.chmod(0o777)  # as if another user had made it first, open to all
    try:
        with pytest.raises(ExecutorError, match="not a private folder"):
            control_dir_for(long_dir)
    finally:
        shutil.rmtree(first)
