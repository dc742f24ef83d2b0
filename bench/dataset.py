"""Dataset builder at disk speed: full build against a files2jsonl-like reference, and one-file updates.

    python bench/dataset.py --repo PATH_TO_A_BIG_REAL_REPO [--repeat 3] [--updates 5] [--small 1000]

Everything runs side by side in one run on this machine, each command as a user runs it (a new process):
- ``reference``: what files2jsonl does, as fast as orjson can: read every file of the exported tree (``git
  archive`` of HEAD, not timed) and write ``{"text", "url"}`` JSONL, no filter;
- ``build``: ``repopilot dataset build OUT REPO`` with every filter, exact and near dedup and the secret scan,
  reading committed content from git: wall, CPU, peak RSS (of the process tree), and processes left behind;
- ``build_file_commits``: the same with ``--file-commits`` (each record's newest commit, files2jsonl records
  none), which walks the whole first-parent history;
- ``history_walk``: that ``git log`` over the first-parent history alone: a floor under the second build;
- ``updates``: commit one changed file, then ``repopilot dataset update OUT`` end to end, on a small
  synthetic repository, on the real one (a clone, so the original is never touched) and on a large synthetic one;
- ``build_large``: the full build of that large synthetic repository (``--large`` files written by ``git
  fast-import``, whose pack stores each blob as a delta on the one before: chains of 50, read forward).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
}
REFERENCE = r"""
import os, sys, orjson
root, out = sys.argv[1], sys.argv[2]
with open(out, "wb", buffering=1 << 20) as sink:
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            with open(path, "rb") as handle:
                text = handle.read().decode("utf-8", "replace")
            record = {"text": text, "url": os.path.relpath(path, root)}
            sink.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
"""


def timed(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run ``cmd``; wall seconds, CPU seconds and peak RSS (MB) of its process tree, and its exit code."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}): {stderr[-2000:]}")
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def repopilot(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent.cli", *args]


def left_behind(marker: str) -> list[str]:
    """Processes still alive whose environment carries ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if marker.encode() in Path(f"/proc/{entry}/environ").read_bytes():
                found.append(Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
        except OSError:
            continue
    return found


def reference(repo: Path, work: Path, repeat: int) -> dict:
    tree = work / "exported"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(repo), "archive", "HEAD"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    runs = [timed([sys.executable, "-c", REFERENCE, str(tree), str(work / "reference.jsonl")]) for _ in range(repeat)]
    files = sum(len(f) for _, _, f in os.walk(tree))
    return {"files": files, "mb": round(len(archive) / 1e6, 1), **median_run(runs)}


def median_run(runs: list[dict]) -> dict:
    best = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
    return {**best, "wall_s_all": [r["wall_s"] for r in runs]}


def full_build(
    repo: Path, work: Path, repeat: int, *options: str, label: str = "build", extra_env: dict | None = None
) -> dict:
    runs, left = [], []
    name = label + "".join(options).replace("-", "_")
    for n in range(repeat):
        marker = f"REPOPILOT_BENCH_MARK={uuid.uuid4().hex}"
        env = {**os.environ, **(extra_env or {}), "REPOPILOT_BENCH_MARK": marker.split("=")[1]}
        out = work / f"{name}-{n}"
        command = repopilot("dataset", "build", str(out), str(repo), "--progress", "none", *options)
        runs.append(timed(command, env, REPO_ROOT))
        time.sleep(0.2)
        left += left_behind(marker)
    stats = json.loads((work / f"{name}-0" / "stats.json").read_text())
    return {
        **median_run(runs),
        "files_seen": stats["files_seen"],
        "files_kept": stats["files_kept"],
        "mb_seen": round(stats["bytes_seen"] / 1e6, 1),
        "dropped": stats["dropped"],
        "processes_left": left,
    }


def history_walk(repo: Path) -> dict:
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    cmd = ["git", "-C", str(repo), "log", "--first-parent", "--root", "--raw", "--no-renames", "-z", head]
    commits = subprocess.run(
        ["git", "-C", str(repo), "rev-list", "--first-parent", "--count", head], capture_output=True
    )
    return {"commits": int(commits.stdout), **timed(cmd)}


def make_synthetic(path: Path, files: int, seed: int = 1) -> None:
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    rng = random.Random(seed)
    words = ["client", "server", "request", "response", "cache", "index", "token", "parser", "config", "handler"]
    chunks = ["commit refs/heads/main\n", "committer bench <bench@example.com> 1700000000 +0000\n", "data 7\ninitial\n"]
    for i in range(files):
        lines = [f'"""Module {i}."""', "import json", ""]
        for f in range(rng.randrange(6, 30)):
            a, b = rng.sample(words, 2)
            lines += [
                f"def {a}_{b}_{i}_{f}({a}, {b}=None):",
                f"    return json.dumps({{'{a}': {a}, 'n': {rng.randrange(10**6)}}})",
                "",
            ]
        body = ("\n".join(lines) + "\n").encode()
        chunks.append(f"M 100644 inline src/pkg{i % 97}/mod_{i}.py\ndata {len(body)}\n{body.decode()}\n")
    subprocess.run(["git", "-C", str(path), "fast-import", "--quiet"], input="".join(chunks).encode(), check=True)
    subprocess.run(["git", "-C", str(path), "checkout", "-q", "main"], check=True)


def commit_one_file(repo: Path, n: int) -> None:
    listed = subprocess.run(["git", "-C", str(repo), "ls-files"], capture_output=True, text=True, check=True)
    candidates = [p for p in listed.stdout.splitlines() if p.endswith((".py", ".java", ".go", ".js", ".ts", ".kt"))]
    target = repo / random.Random(n).choice(candidates)
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(f"\n# bench edit {n}\n" if target.suffix == ".py" else f"\n// bench edit {n}\n")
    subprocess.run(["git", "-C", str(repo), "commit", "-qam", f"bench edit {n}"], check=True, env=GIT_ENV)


def updates(repo: Path, label: str, count: int, work: Path) -> dict:
    out = work / f"update-{label}"
    subprocess.run(repopilot("dataset", "build", str(out), str(repo), "--progress", "none"), cwd=REPO_ROOT,
                   check=True, capture_output=True)  # fmt: skip
    seconds = []
    for n in range(count):
        commit_one_file(repo, n)
        seconds.append(timed(repopilot("dataset", "update", str(out), "--progress", "none"), cwd=REPO_ROOT)["wall_s"])
    files = json.loads((out / "stats.json").read_text())["files_seen"]
    return {
        "repo": label,
        "files": files,
        "median_s": statistics.median(seconds),
        "max_s": max(seconds),
        "all_s": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="a large real git repository (10,000+ files)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the reference and of the full build")
    parser.add_argument("--updates", type=int, default=5, help="one-file commits to time per repository")
    parser.add_argument("--small", type=int, default=1000, help="files of the small synthetic repository")
    parser.add_argument("--large", type=int, default=60000, help="files of the large synthetic repository (0: none)")
    args = parser.parse_args()
    # timed as installed: with the project's bytecode compiled (pip does it for a wheel, scripts/bootstrap.sh for
    # this checkout), so no command pays for compiling its modules, even where PYTHONDONTWRITEBYTECODE is set
    subprocess.run([sys.executable, "-m", "compileall", "-q", "agent", "pipelines"], cwd=REPO_ROOT, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    # and so are the builder's C loops (an empty answer: compiled and loaded)
    compiled = subprocess.run([sys.executable, "-m", "pipelines.dataset.native"], cwd=REPO_ROOT, check=True,
                              capture_output=True, text=True).stdout == ""  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="repopilot-bench-") as tmp:
        work = Path(tmp)
        clone = work / "clone"
        subprocess.run(["git", "clone", "-q", "--shared", str(args.repo.resolve()), str(clone)], check=True)
        result = {"bench": "dataset", "cpus": os.cpu_count(), "repo": args.repo.resolve().name,
                  "compiled_loops": compiled}  # fmt: skip
        result["reference"] = reference(clone, work, args.repeat)
        print(json.dumps({"reference": result["reference"]}), file=sys.stderr)
        result["build"] = full_build(clone, work, args.repeat)
        print(json.dumps({"build": result["build"]}), file=sys.stderr)
        result["build_file_commits"] = full_build(clone, work, args.repeat, "--file-commits")
        print(json.dumps({"build_file_commits": result["build_file_commits"]}), file=sys.stderr)
        if compiled:  # the same build with the numpy twins of the C loops (REPOPILOT_NATIVE=0)
            twins = full_build(clone, work, args.repeat, label="build_numpy_loops", extra_env={"REPOPILOT_NATIVE": "0"})
            result["build_numpy_loops"] = twins
            print(json.dumps({"build_numpy_loops": twins}), file=sys.stderr)
        result["history_walk"] = history_walk(clone)
        small = work / "small"
        make_synthetic(small, args.small)
        result["updates"] = [updates(small, f"synthetic-{args.small}", args.updates, work),
                             updates(clone, "real", args.updates, work)]  # fmt: skip
        if args.large:
            large = work / "large"
            make_synthetic(large, args.large)
            result["build_large"] = full_build(large, work, 1, label="build_large")
            print(json.dumps({"build_large": result["build_large"]}), file=sys.stderr)
            result["updates"].append(updates(large, f"synthetic-{args.large}", args.updates, work))
    build, ref = result["build"], result["reference"]
    result["build_vs_reference"] = round(build["wall_s"] / ref["wall_s"], 1)
    result["build_file_commits_vs_reference"] = round(result["build_file_commits"]["wall_s"] / ref["wall_s"], 1)
    result["goals"] = {
        "build_within_2x_reference": build["wall_s"] <= 2 * ref["wall_s"],
        "update_under_0.3_s": all(u["median_s"] < 0.3 for u in result["updates"]),
        "peak_rss_under_200_mb": max(build["peak_rss_mb"], result["build_file_commits"]["peak_rss_mb"]) < 200,
        "no_process_left": not build["processes_left"] and not result["build_file_commits"]["processes_left"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
