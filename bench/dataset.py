"""Dataset builder speed: full build throughput, and one-file incremental updates at two repo sizes.

    python bench/dataset.py [--repo PATH_TO_BIG_REAL_REPO] [--sizes 2000,20000] [--updates 5]

Prints one JSON object. A real repository is cloned (``git clone --shared``, cheap) so the bench can
commit to it; synthetic repositories are generated with ``git fast-import``.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.dataset.builder import build, update
from pipelines.dataset.config import DatasetConfig, RepoSpec

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
}
WORDS = [
    "client",
    "server",
    "request",
    "response",
    "cache",
    "index",
    "token",
    "parser",
    "config",
    "handler",
    "buffer",
    "stream",
]


def synthetic_module(rng: random.Random, i: int) -> str:
    lines = [f'"""Module {i}: {" ".join(rng.sample(WORDS, 4))}."""', "", "import os", "import json", ""]
    for f in range(rng.randrange(6, 30)):
        a, b = rng.sample(WORDS, 2)
        lines += [
            f"def {a}_{b}_{i}_{f}({a}, {b}=None):",
            f'    """Return the {a} of {b} #{rng.randrange(10**6)}."""',
            f"    value = json.dumps({{'{a}': {a}, '{b}': {b}, 'n': {rng.randrange(10**6)}}})",
            f"    if {b} is not None and len(value) > {rng.randrange(100)}:",
            f"        return os.path.join(str({b}), value)",
            "    return value",
            "",
        ]
    return "\n".join(lines) + "\n"


def make_synthetic(path: Path, files: int, seed: int = 1) -> None:
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    rng = random.Random(seed)
    chunks = ["commit refs/heads/main\n", "committer bench <bench@example.com> 1700000000 +0000\n"]
    chunks.append("data 7\ninitial\n")
    for i in range(files):
        body = synthetic_module(rng, i).encode()
        chunks.append(f"M 100644 inline src/pkg{i % 97}/mod_{i}.py\ndata {len(body)}\n")
        chunks.append(body.decode() + "\n")
    stream = "".join(chunks).encode()
    subprocess.run(["git", "-C", str(path), "fast-import", "--quiet"], input=stream, check=True)
    subprocess.run(["git", "-C", str(path), "checkout", "-q", "main"], check=True)


def commit_one_file(repo: Path, n: int) -> None:
    listed = subprocess.run(["git", "-C", str(repo), "ls-files"], capture_output=True, text=True, check=True)
    candidates = [p for p in listed.stdout.splitlines() if p.endswith((".py", ".java", ".go", ".js", ".ts"))]
    target = repo / random.Random(n).choice(candidates)
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(f"\n// bench edit {n}\n" if target.suffix != ".py" else f"\n# bench edit {n}\n")
    subprocess.run(["git", "-C", str(repo), "commit", "-qam", f"bench edit {n}"], check=True, env=GIT_ENV)


def measure(repo: Path, label: str, updates: int, work: Path) -> dict:
    out = work / f"ds-{label}"
    started = time.perf_counter()
    build(out, [RepoSpec(label, str(repo))], DatasetConfig())
    build_s = time.perf_counter() - started
    stats = json.loads((out / "stats.json").read_text())
    seconds = []
    for n in range(updates):
        commit_one_file(repo, n)
        started = time.perf_counter()
        result = update(out)
        seconds.append(time.perf_counter() - started)
        assert result.records_changed == 1, result
    return {
        "repo": label,
        "files": stats["files_seen"],
        "files_kept": stats["files_kept"],
        "mb_seen": round(stats["bytes_seen"] / 1e6, 1),
        "build_s": round(build_s, 2),
        "build_files_per_s": round(stats["files_seen"] / build_s),
        "build_mb_per_s": round(stats["bytes_seen"] / 1e6 / build_s, 2),
        "update_one_file_s_median": round(statistics.median(seconds), 3),
        "update_one_file_s_max": round(max(seconds), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, help="a large real git repository (10,000+ files)")
    parser.add_argument("--sizes", default="2000,20000", help="synthetic repository sizes (files)")
    parser.add_argument("--updates", type=int, default=5, help="one-file commits to time per repository")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="repopilot-bench-") as tmp:
        work = Path(tmp)
        for size in [int(s) for s in args.sizes.split(",") if s]:
            repo = work / f"synthetic-{size}"
            make_synthetic(repo, size)
            results.append(measure(repo, f"synthetic-{size}", args.updates, work))
            print(json.dumps(results[-1]), file=sys.stderr)
        if args.repo:
            clone = work / "real"
            subprocess.run(["git", "clone", "-q", "--shared", str(args.repo), str(clone)], check=True)
            label = "real-" + "".join(c if c.isalnum() or c in "._-" else "-" for c in args.repo.resolve().parent.name)
            results.append(measure(clone, label[:90], args.updates, work))
    print(json.dumps({"bench": "dataset", "cpus": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
