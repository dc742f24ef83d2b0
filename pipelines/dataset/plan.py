"""What changed in each repository since it was last indexed, and how to find out cheaply.

Fast path: the indexed commit is on the new ref's first-parent chain, so git's diff between the two (and,
for files' commits, the log of the range) say everything. Fallback (force push, missing commit, other
settings): compare the whole tree at the new ref with what the state holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from pipelines.dataset.config import RepoSpec
from pipelines.dataset.gitsource import MODE_SUBMODULE, GitSource, HistoryWalk, TreeEntry
from pipelines.dataset.rows import FileRow
from pipelines.dataset.state import StateStore


class PlanMode(str, Enum):
    FULL = "full"  # new repo or new settings: every path is looked at again
    FAST = "fast"  # git diff old..new
    REWRITE = "rewrite"  # history was rewritten: compare the tree with the state
    UNCHANGED = "unchanged"


@dataclass
class RepoPlan:
    """The paths of one repo whose rows must be (re)computed or deleted."""

    spec: RepoSpec
    source: GitSource
    ref: str
    commit: str
    mode: PlanMode
    targets: dict[str, TreeEntry] = field(default_factory=dict)
    commits: dict[str, str] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)
    history: HistoryWalk | None = None  # a full plan's commits come from this walk (see start_history)
    file_commits: bool = False  # False: no history is read and every row's commit is ""

    def last_commits(self, rev_range: str, paths: set[str] | None = None) -> dict[str, str]:
        """The newest commit touching each path in ``rev_range`` (none when file commits are off)."""
        return self.source.last_commits(rev_range, paths) if self.file_commits else {}

    def commit_of(self, path: str, found: dict[str, str]) -> str:
        """The commit to record for ``path``: the one found, else the indexed one ("" when off)."""
        return found.get(path, self.commit) if self.file_commits else ""

    def start_history(self) -> None:
        """Start the walk that finds each target's newest commit; it runs while blobs are analysed."""
        if self.history is not None and self.history.thread is None:
            self.history.start()

    def finish_history(self) -> None:
        """Wait for the walk and fill ``commits``."""
        if self.history is None:
            return
        found = self.history.result()
        for path in self.targets:
            self.commits[path] = self.commit_of(path, found)
        self.history = None

    def close_history(self) -> None:
        if self.history is not None:
            self.history.close()


def plan_repo(
    spec: RepoSpec,
    source: GitSource,
    indexed: dict | None,
    store: StateStore,
    full: bool,
    file_commits: bool,
) -> RepoPlan:
    """Decide how to bring one repo from its indexed state to ``spec.ref``."""
    ref, commit = source.resolve(spec.ref)
    if full or indexed is None or indexed["spec"] != spec.to_json():
        plan = RepoPlan(spec, source, ref, commit, PlanMode.FULL, file_commits=file_commits)
        _plan_from_tree(plan, store.files_of(spec.name), compare=False)
        return plan
    if indexed["commit"] == commit:
        return RepoPlan(spec, source, ref, commit, PlanMode.UNCHANGED, file_commits=file_commits)
    chain = source.first_parent_range(indexed["commit"], commit)
    if chain is None:
        plan = RepoPlan(spec, source, ref, commit, PlanMode.REWRITE, file_commits=file_commits)
        _plan_from_tree(plan, store.files_of(spec.name), compare=True)
        return plan
    plan = RepoPlan(spec, source, ref, commit, PlanMode.FAST, file_commits=file_commits)
    _plan_from_diff(plan, indexed["commit"], store)
    return plan


def _plan_from_tree(plan: RepoPlan, rows: dict[str, FileRow], compare: bool) -> None:
    tree = plan.source.tree(plan.commit)
    plan.deleted = set(rows) - set(tree)
    plan.counts = {"paths": len(tree), "recomputed": len(tree), "deleted": len(plan.deleted)}
    if not compare:  # every path is a target; their commits come later, from a walk that overlaps the analysis
        plan.targets = dict(tree)
        if plan.file_commits:
            plan.history = HistoryWalk(plan.source, plan.commit, set(tree))
        else:
            plan.commits = dict.fromkeys(tree, "")
        return
    commits = plan.last_commits(plan.commit, set(tree))
    for path, entry in tree.items():
        old = rows.get(path)
        commit = plan.commit_of(path, commits)
        if old is not None and (old.mode, old.sha, old.commit_sha) == (entry.mode, entry.sha, commit):
            continue
        plan.targets[path] = entry
        plan.commits[path] = commit
    plan.counts["recomputed"] = len(plan.targets)


def _plan_from_diff(plan: RepoPlan, old_commit: str, store: StateStore) -> None:
    changes = plan.source.diff(old_commit, plan.commit)
    touched = plan.last_commits(f"{old_commit}..{plan.commit}")
    counts = {"added": 0, "modified": 0, "deleted": 0, "renamed": 0}
    if plan.file_commits:  # paths the range's commits touched (known only from its log)
        counts["touched"] = len(touched)
    new_entries: dict[str, tuple[str, str]] = {}
    for change in changes:
        if change.status == "D":
            plan.deleted.add(change.path)
            counts["deleted"] += 1
            continue
        if change.status == "R":
            plan.deleted.add(change.old_path or "")
            counts["renamed"] += 1
        elif change.status == "A" or store.get((plan.spec.name, change.path)) is None:
            counts["added"] += 1
        else:
            counts["modified"] += 1
        new_entries[change.path] = (change.mode, change.sha)
    plan.deleted -= set(new_entries)
    sizes = plan.source.blob_sizes(sha for mode, sha in new_entries.values() if mode != MODE_SUBMODULE)
    for path, (mode, sha) in new_entries.items():
        plan.targets[path] = TreeEntry(mode, sha, -1 if mode == MODE_SUBMODULE else sizes.get(sha, -1))
        plan.commits[path] = plan.commit_of(path, touched)
    # Paths touched in the range but equal at both ends (a change and its revert) keep their content,
    # but the newest commit touching them is new.
    for path, commit in touched.items():
        if path in plan.targets or path in plan.deleted:
            continue
        old = store.get((plan.spec.name, path))
        if old is None or old.commit_sha == commit:
            continue
        plan.targets[path] = TreeEntry(old.mode, old.sha, old.size)
        plan.commits[path] = commit
    plan.counts = counts
