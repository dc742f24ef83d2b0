"""Idle cost of the agent: CPU and memory of a background agent watching 10 repositories, and API latency.

    python bench/agent.py [--repos 10] [--files 200] [--seconds 45] [--calls 50]

Starts a real agent (``repopilot agent start``, detached) on a temp data folder, adds ``--repos`` synthetic git
repositories through the API, waits until their dataset updates are done, then measures over ``--seconds``
with nothing committed: the agent's CPU time (utime+stime of /proc/<pid>/stat, as a percent of one core) and
its resident memory. Afterwards the median latency of ``status()`` through the typed client. The retrain policy
is set so that nothing trains. Prints one JSON object; the load average is recorded since other work on the
machine skews the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import daemon
from agent.api.client import AgentClient
from agent.config import AgentConfig, Config, PolicyConfig, ServerConfig, TrainingConfig, save_config

NEVER = 10**9
WORDS = ["client", "server", "request", "cache", "index", "token", "parser", "config", "handler", "stream"]


def make_repo(path: Path, files: int, seed: int) -> None:
    """A git repository of ``files`` small Python modules, in one commit (git fast-import)."""
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    rng = random.Random(seed)
    chunks = ["commit refs/heads/main\n", "committer bench <bench@example.com> 1700000000 +0000\n", "data 7\ninitial\n"]
    for i in range(files):
        a, b = rng.sample(WORDS, 2)
        body = f'"""{a} {b} {seed}/{i}."""\n\n\ndef {a}_{b}_{i}({a}, {b}=None):\n    return ({a}, {b}, {i * seed})\n'
        chunks.append(f"M 100644 inline src/mod_{i}.py\ndata {len(body.encode())}\n{body}\n")
    subprocess.run(["git", "-C", str(path), "fast-import", "--quiet"], input="".join(chunks).encode(), check=True)
    subprocess.run(["git", "-C", str(path), "checkout", "-q", "main"], check=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime (fields 14, 15)


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def wait_settled(client: AgentClient, timeout: float) -> bool:
    """True once no job is queued or running (the dataset updates of the added repos are done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not client.list_jobs(state="queued") and not client.list_jobs(state="running"):
            return True
        time.sleep(0.5)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=10)
    parser.add_argument("--files", type=int, default=200, help="files per repository")
    parser.add_argument("--seconds", type=float, default=45, help="length of the idle measurement")
    parser.add_argument("--calls", type=int, default=50, help="status() calls to time")
    parser.add_argument("--settle-timeout", type=float, default=300, help="wait this long for the dataset jobs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="repopilot-bench-agent-") as tmp:
        work = Path(tmp)
        config = Config(
            agent=AgentConfig(api_port=free_port(), data_dir=str(work / "data")),
            training=TrainingConfig(base_model="tiny", max_steps=2),
            policy=PolicyConfig(min_changed_lines=NEVER, min_changed_files=NEVER),
            server=ServerConfig(runtime="embedded", port=free_port()),
        )
        config_file = save_config(config, work / "config.toml")
        for i in range(args.repos):
            make_repo(work / f"repo-{i:02d}", args.files, seed=i + 1)

        pid = daemon.start_background(config_file, timeout=120)
        try:
            client = AgentClient.connect(config_file)
            rss_started_mb = int(proc_status(pid)["VmRSS"].split()[0]) / 1024
            for i in range(args.repos):
                client.add_repo(str(work / f"repo-{i:02d}"))
            settled = wait_settled(client, args.settle_timeout)
            time.sleep(3)  # let the watcher's debounce and the last events pass

            load_before = os.getloadavg()[0]
            cpu_before, started = cpu_seconds(pid), time.monotonic()
            time.sleep(args.seconds)
            cpu_used, elapsed = cpu_seconds(pid) - cpu_before, time.monotonic() - started
            status = proc_status(pid)

            latencies = []
            for _ in range(args.calls):
                t0 = time.perf_counter()
                client.status()
                latencies.append((time.perf_counter() - t0) * 1000)
            jobs = client.list_jobs()
        finally:
            daemon.stop(config_file)

    print(
        json.dumps(
            {
                "bench": "agent",
                "repos": args.repos,
                "files_per_repo": args.files,
                "seconds": round(elapsed, 1),
                "cpu_percent": round(100 * cpu_used / elapsed, 3),
                "cpu_seconds": round(cpu_used, 3),
                "rss_mb": round(int(status["VmRSS"].split()[0]) / 1024, 1),
                "rss_mb_at_start": round(rss_started_mb, 1),
                "threads": int(status["Threads"]),
                "api_status_ms": round(statistics.median(latencies), 2),
                "api_status_ms_p95": round(sorted(latencies)[int(0.95 * (len(latencies) - 1))], 2),
                "jobs_settled": settled,
                "jobs": [f"{j.id} {j.kind} {j.state}" for j in jobs],
                "cpus": os.cpu_count(),
                "load_avg_1m": round(load_before, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
