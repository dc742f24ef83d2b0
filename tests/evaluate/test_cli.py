"""The real ``python -m pipelines.evaluate``: reports, the gate's exit codes, and errors a user can act on."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest

from pipelines.dataset import cli as dataset_cli
from pipelines.dataset.builder import build
from pipelines.dataset.config import DatasetConfig, RepoSpec
from pipelines.evaluate import cli
from tests.evaluate.conftest import Models, World, run_eval

FAST = ("--max-files", "16", "--max-lines-per-file", "4", "--bootstrap", "400", "--progress", "none")


@pytest.fixture(scope="module")
def right_way(world: World, models: Models, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The untrained base serving, the fine-tuned model as the candidate, on both splits, gated."""
    out = tmp_path_factory.mktemp("report")
    args = ("--baseline", models.base, "--candidate", models.tuned, "--split", "both", "--since", world.indexed)
    done = run_eval(world.dataset, *args, "--out", out, "--gate", *FAST)
    return done, out


def test_the_fine_tuned_candidate_beats_the_base_and_passes_the_gate(right_way: tuple, world: World) -> None:
    done, out = right_way
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    time_split = report["splits"]["time"]
    internal = time_split["metrics"]["internal_exact_match"]
    assert internal["candidate"] > internal["baseline"] and internal["ci"][0] > 0 and internal["verdict"] == "better"
    loss = time_split["metrics"]["loss"]
    assert loss["candidate"] < loss["baseline"] and loss["ci"][1] < 0 and loss["verdict"] == "better"
    recall = time_split["metrics"]["internal_identifier_recall"]
    assert recall["candidate"] > recall["baseline"] and recall["ci"][0] > 0 and recall["verdict"] == "better"
    identifiers = time_split["metrics"]["internal_identifier_loss"]
    assert identifiers["ci"][1] < 0 and identifiers["ratio"] < 1 and identifiers["ratio_ci"][1] < 1
    assert time_split["internal_lines"] > 10 and time_split["files"] == 16 and time_split["identifier_uses"] > 10
    assert report["gate"] == {**report["gate"], "worse": False, "reasons": [], "applied": True}
    # Provenance: what was compared, on what, with which settings, and how long it took.
    assert report["models"]["baseline"]["path"] == str(Path(report["models"]["baseline"]["path"]))
    assert {Path(report["models"][r]["path"]).name for r in ("baseline", "candidate")} == {"base", "tuned"}
    assert report["samples"]["time"]["since_commit"] == world.indexed
    assert report["samples"]["time"]["until_commit"] == world.head
    assert report["samples"]["validation"]["files"] == report["splits"]["validation"]["files"] > 0
    assert report["settings"]["seed"] == 0 and report["settings"]["bootstrap"] == 400
    assert report["settings"]["splits"] == ["validation", "time"]
    assert report["wall_seconds"] > 0
    assert len(report["files"]) == sum(s["files"] for s in report["splits"].values())
    # The readable table says the same, and stdout shows it.
    markdown = (out / "report.md").read_text()
    assert "## Gate: PASS" in markdown
    assert "| metric | baseline | candidate | delta | 95% CI | ratio (95% CI) | verdict |" in markdown
    assert "| internal_exact_match (higher is better) | 0.0% |" in markdown
    assert "| internal_identifier_recall (higher is better) | 0.0% |" in markdown
    assert "## Split `time`: 16 files" in markdown
    assert "## Split `time`" in done.stdout
    # A planted secret never reaches a report, redacted before any model saw it.
    for name in ("report.json", "report.md"):
        text = (out / name).read_text()
        assert world.secret not in text and world.training_secret not in text
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_the_gate_fails_when_the_candidate_is_the_untrained_model(
    right_way: tuple, world: World, models: Models, tmp_path: Path
) -> None:
    args = ("--baseline", models.tuned, "--candidate", models.base, "--since", world.indexed)
    done = run_eval(world.dataset, *args, "--out", tmp_path, "--gate", *FAST)
    assert done.returncode == 3, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("Gate failed: the candidate is worse than the baseline (")
    assert "time: internal_identifier_recall fell by" in line and "time: internal_identifier_loss rose by" in line
    assert "time: other_token_loss rose by" in line and str(tmp_path / "report.md") in line
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["gate"]["worse"] and report["splits"]["time"]["metrics"]["loss"]["verdict"] == "worse"
    assert "## Gate: FAIL" in (tmp_path / "report.md").read_text()
    # Without --gate the same comparison is only reported.
    assert right_way[0].returncode == 0


def test_one_model_is_reported_with_intervals_and_json(world: World, models: Models, tmp_path: Path, capsys) -> None:
    argv = [str(world.dataset), "--model", str(models.tuned), "--out", str(tmp_path), "--json", *FAST]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "report.json").read_text())
    assert list(printed["splits"]) == ["validation"] and "gate" not in printed
    exact = printed["splits"]["validation"]["metrics"]["exact_match"]
    assert exact["ci"][0] <= exact["value"] <= exact["ci"][1]
    assert "| metric | value | 95% CI |" in (tmp_path / "report.md").read_text()


def test_the_same_inputs_give_the_same_numbers(world: World, models: Models, tmp_path: Path) -> None:
    reports = []
    for run in ("a", "b"):
        argv = [str(world.dataset), "--model", str(models.base), "--since", world.indexed, "--out", str(tmp_path / run)]
        assert cli.main([*argv, *FAST]) == 0
        report = json.loads((tmp_path / run / "report.json").read_text())
        reports.append((report["splits"], report["files"], report["examples"]))
    assert reports[0] == reports[1]


def test_the_command_mounts_under_the_main_cli_as_eval(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="repopilot")
    sub = parser.add_subparsers(dest="command", required=True)
    dataset_cli.add_parser(sub)
    cli.add_parser(sub)
    args = parser.parse_args(["eval", "DS", "--model", "M", "--out", str(tmp_path), "--gate"])
    assert (args.command, args.dataset, args.model, args.gate, args.max_new_tokens) == (
        "eval",
        Path("DS"),
        Path("M"),
        True,
        48,
    )


@pytest.fixture(scope="module")
def no_validation(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bare") / "dataset"
    build(out, [RepoSpec("ledger", str(world.repo.path), world.indexed)], DatasetConfig(val_fraction=0.0))
    return out


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing candidate", "Model not found: --candidate"),
        ("unknown commit", "Unknown commit: --since: "),
        ("unknown repo", "Invalid input: "),
        ("no validation records", "Nothing to evaluate on: "),
        ("missing dataset", "Dataset not found: "),
        ("gate with one model", "Invalid evaluation settings: --gate compares two models"),
    ],
)
def test_bad_inputs_fail_with_one_clear_line_and_exit_1(
    case: str, expected: str, world: World, models: Models, no_validation: Path, tmp_path: Path
) -> None:
    pair = ("--baseline", models.base, "--candidate", models.tuned)
    argv = {
        "missing candidate": (world.dataset, "--baseline", models.base, "--candidate", tmp_path / "gone"),
        "unknown commit": (world.dataset, *pair, "--since", "0123456789abcdef"),
        "unknown repo": (world.dataset, *pair, "--since", world.indexed, "--repo", "frontend"),
        "no validation records": (no_validation, *pair),
        "missing dataset": (tmp_path / "nothing-here", *pair),
        "gate with one model": (world.dataset, "--model", models.base, "--gate"),
    }[case]
    done: subprocess.CompletedProcess = run_eval(*argv, "--out", tmp_path / "out", "--progress", "none")
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(expected), line
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "out" / "report.json").exists()


def test_public_code_is_a_split_of_its_own_scored_for_forgetting(world: World, models: Models, tmp_path: Path) -> None:
    public = tmp_path / "public"
    (public / "pkg").mkdir(parents=True)
    for i in range(4):
        (public / "pkg" / f"mod{i}.py").write_text(
            f"def helper_{i}(x):\n    return x * {i}\n\n\nprint(helper_{i}(2))\n"
        )
    (public / "README.md").write_text("# Not code\n\nProse is not scored.\n")
    args = ("--baseline", models.base, "--candidate", models.tuned, "--since", world.indexed, "--public", public)
    done = run_eval(world.dataset, *args, "--out", tmp_path / "out", *FAST)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["splits"]) == {"time", "public"}
    assert report["splits"]["public"]["files"] == 4 and report["samples"]["public"]["candidates"] == 4  # no .md
    assert report["splits"]["public"]["metrics"]["loss"]["baseline"] > 0
    assert "public/loss" in report["gate"]["checked"] and report["settings"]["public_tolerance"] == 0.1
    assert "public code in" in (tmp_path / "out" / "report.md").read_text()


def test_with_repository_context_each_model_is_compared_with_and_without_it(
    world: World, models: Models, tmp_path: Path
) -> None:
    args = ("--baseline", models.base, "--candidate", models.tuned, "--since", world.indexed, "--context", "repo")
    done = run_eval(world.dataset, *args, "--out", tmp_path, "--gate", *FAST)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["context"] == "repo" and report["settings"]["context_tokens"] == 256
    context = report["splits"]["time"]["context"]
    assert set(context) == {"baseline", "candidate", "served"}
    plain = report["splits"]["time"]["metrics"]["internal_identifier_recall"]
    recall = {name: context[name]["metrics"]["internal_identifier_recall"] for name in context}
    # Without context, the four arms agree with the plain comparison; each gain has its interval.
    assert recall["baseline"]["baseline"] == plain["baseline"] and recall["candidate"]["baseline"] == plain["candidate"]
    assert recall["served"]["baseline"] == recall["baseline"]["candidate"]
    assert recall["served"]["candidate"] == recall["candidate"]["candidate"]
    for entry in recall.values():
        assert entry["ci"][0] <= entry["delta"] <= entry["ci"][1]
    assert "time/context/internal_identifier_recall" in report["gate"]["checked"] and not report["gate"]["worse"]
    assert "public" not in report["splits"] or "context" not in report["splits"]["public"]
    markdown = (tmp_path / "report.md").read_text()
    assert "Repository context (`--context repo`):" in markdown
    assert "| candidate vs baseline, both with context | internal_identifier_recall |" in markdown
