"""Dataset builder at disk speed: full build against a files2jsonl-like reference, and one-file updates.

    python bench/dataset.py --repo PATH_TO_A_BIG_REAL_REPO [--repeat 3] [--updates 5] [--small 1000]

Everything runs side by side in one run on this machine, each command as a user runs it (a new process); the
reference and the full builds take turns, one run of each at a time:
- ``reference``: what files2jsonl does, as fast as orjson can: read every file of the exported tree (``git
  archive`` of HEAD, not timed) and write ``{"text", "url"}`` JSONL, no filter;
- ``build``: ``repopilot dataset build OUT REPO`` with every filter, exact and near dedup and the secret scan,
  reading committed content from git: wall, CPU, peak RSS (of the process tree), and processes left behind;
- ``build_file_commits``: the same with ``--file-commits`` (each record's newest commit, files2jsonl records
  none), which walks the whole first-parent history;
- ``build_numpy_loops``: ``build`` with the numpy twins of its compiled loops (``REPOPILOT_NATIVE=0``);
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


# Runs a command and reports its wall time, CPU time and peak RSS as JSON. A child's peak RSS counts the memory of
# the process that forked it (Linux records the old image's high-water mark at exec, and vfork shares it), so
# commands are started from this small process, not from the bench (~150 MB by then, which every figure showed).
LAUNCHER = r"""
import json, os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os.execvp(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"wall": time.perf_counter() - started, "cpu": usage.ru_utime + usage.ru_stime,
                  "rss": usage.ru_maxrss, "code": os.waitstatus_to_exitcode(status)}))
"""


def timed(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run ``cmd``; wall seconds, CPU seconds and peak RSS (MB) of its process tree (the launcher's start-up not
    counted)."""
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *cmd], env=env, cwd=cwd, capture_output=True, text=True, check=False
    )
    try:
        found = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise SystemExit(f"{' '.join(cmd)} could not be timed: {proc.stderr[-2000:]}") from None
    if found["code"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({found['code']}): {proc.stderr[-2000:]}")
    return {
        "wall_s": round(found["wall"], 3),
        "cpu_s": round(found["cpu"], 2),
        "peak_rss_mb": round(found["rss"] / 1024, 1),
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


def export_tree(repo: Path, work: Path) -> dict:
    """The reference's input: HEAD's tree written out (``git archive``, not timed)."""
    tree = work / "exported"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(repo), "archive", "HEAD"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return {"tree": tree, "files": sum(len(f) for _, _, f in os.walk(tree)), "mb": round(len(archive) / 1e6, 1)}


def reference_run(tree: Path, work: Path) -> dict:
    return timed([sys.executable, "-c", REFERENCE, str(tree), str(work / "reference.jsonl")])


def median_run(runs: list[dict]) -> dict:
    best = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
    return {**best, "wall_s_all": [r["wall_s"] for r in runs]}


def build_run(repo: Path, work: Path, name: str, options: tuple[str, ...] = (), extra_env: dict | None = None) -> dict:
    """One ``repopilot dataset build`` into a new folder: its timing, and the processes it left alive."""
    mark = uuid.uuid4().hex
    out = work / f"{name}-{uuid.uuid4().hex[:8]}"
    command = repopilot("dataset", "build", str(out), str(repo), "--progress", "none", *options)
    run = timed(command, {**os.environ, **(extra_env or {}), "REPOPILOT_BENCH_MARK": mark}, REPO_ROOT)
    time.sleep(0.2)
    return {**run, "out": out, "left": left_behind(mark)}


def build_summary(runs: list[dict]) -> dict:
    stats = json.loads((runs[0]["out"] / "stats.json").read_text())
    timings = [{key: run[key] for key in ("wall_s", "cpu_s", "peak_rss_mb")} for run in runs]
    return {
        **median_run(timings),
        "files_seen": stats["files_seen"],
        "files_kept": stats["files_kept"],
        "mb_seen": round(stats["bytes_seen"] / 1e6, 1),
        "dropped": stats["dropped"],
        "processes_left": [process for run in runs for process in run["left"]],
    }


def side_by_side(variants: dict, repeat: int) -> dict[str, list[dict]]:
    """Every variant run ``repeat`` times, one run of each in turn, so that the machine's drifts (this VM's speed
    swings by 10-20% over minutes) fall on all of them alike."""
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, run in variants.items():
            runs[name].append(run())
            print(json.dumps({name: {key: runs[name][-1][key] for key in ("wall_s", "cpu_s")}}), file=sys.stderr)
    return runs


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
    parser.add_argument("--repeat", type=int, default=3, help="runs of the reference and of each full build")
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
        exported = export_tree(clone, work)
        variants = {
            "reference": lambda: reference_run(exported["tree"], work),
            "build": lambda: build_run(clone, work, "build"),
            "build_file_commits": lambda: build_run(clone, work, "build_file_commits", ("--file-commits",)),
        }
        if compiled:  # the same build with the numpy twins of the C loops
            variants["build_numpy_loops"] = lambda: build_run(clone, work, "numpy", (), {"REPOPILOT_NATIVE": "0"})
        runs = side_by_side(variants, args.repeat)
        result["reference"] = {"files": exported["files"], "mb": exported["mb"], **median_run(runs.pop("reference"))}
        result.update({name: build_summary(variant_runs) for name, variant_runs in runs.items()})
        result["history_walk"] = history_walk(clone)
        small = work / "small"
        make_synthetic(small, args.small)
        result["updates"] = [updates(small, f"synthetic-{args.small}", args.updates, work),
                             updates(clone, "real", args.updates, work)]  # fmt: skip
        if args.large:
            large = work / "large"
            make_synthetic(large, args.large)
            result["build_large"] = build_summary([build_run(large, work, "build_large")])
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
