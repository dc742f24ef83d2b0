"""``report.json`` (everything, for machines) and ``report.md`` (a table to read), written atomically.

``report.md`` is written first and ``report.json`` last: a folder holding ``report.json`` is complete.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.evaluate.compare import FEW_FILES, METRICS
from pipelines.evaluate.metrics import ModelResult
from pipelines.evaluate.samples import Sample
from pipelines.evaluate.tasks import Task
from pipelines.fsutil import write_bytes_atomic, write_json_atomic

FORMAT = "repopilot-eval/1"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
MAX_EXAMPLES = 20
PERCENT = ("exact_match", "internal_exact_match", "internal_identifier_recall")


def per_file(samples: Sequence[Sample], tasks: Sequence[Task], results: dict[str, ModelResult]) -> list[dict]:
    """One row per sample file: where it is from, and each model's summed scores on it."""
    by_file: dict[int, list[int]] = {}
    for i, task in enumerate(tasks):
        by_file.setdefault(task.file, []).append(i)
    rows = []
    for number, sample in enumerate(samples):
        mine = by_file.get(number, [])
        rows.append(
            {
                "split": sample.split,
                "repo": sample.repo,
                "path": sample.path,
                "sha": sample.sha,
                "lines": sum(tasks[i].uniform for i in mine),
                "internal_lines": sum(tasks[i].internal for i in mine),
                "scores": {
                    role: {
                        "tokens": int(r.files.tokens[number]),
                        "nll": round(float(r.files.nll[number]), 4),
                        "identifier_tokens": int(r.files.ident_tokens[number]),
                        "identifier_nll": round(float(r.files.ident_nll[number]), 4),
                        "exact": int(sum(r.exact[i] for i in mine if tasks[i].uniform)),
                        "internal_exact": int(sum(r.exact[i] for i in mine if tasks[i].internal)),
                    }
                    for role, r in results.items()
                },
            }
        )
    return rows


def examples(samples: Sequence[Sample], tasks: Sequence[Task], results: dict[str, ModelResult]) -> list[dict]:
    """Up to ``MAX_EXAMPLES`` lines that use internal identifiers, with each model's answer."""
    chosen = [i for i, t in enumerate(tasks) if t.internal]
    step = max(1, len(chosen) // MAX_EXAMPLES)
    return [
        {
            "path": samples[tasks[i].file].path,
            "line": tasks[i].line + 1,
            "names": list(tasks[i].names),
            "reference": tasks[i].target,
            "answers": {role: r.answers[i] for role, r in results.items()},
        }
        for i in chosen[::step][:MAX_EXAMPLES]
    ]


def _fmt(value: float | None, name: str) -> str:
    if value is None:
        return "n/a"
    if name in PERCENT:
        return f"{value * 100:.1f}%"
    if name == "perplexity":
        return f"{value:.2f}"
    return f"{value:.4f}"


def _fmt_delta(value: float | None, name: str) -> str:
    if value is None:
        return "n/a"
    text = _fmt(abs(value), name)
    text = text.replace("%", " pp") if name in PERCENT else text
    return ("+" if value >= 0 else "-") + text


def _ratio(entry: dict[str, Any]) -> str:
    ratio, ci = entry.get("ratio"), entry.get("ratio_ci")
    if ratio is None:
        return "n/a"
    return f"{ratio:.2f}x" + (f" ({ci[0]:.2f}..{ci[1]:.2f})" if ci else "")


def _cell(text: str) -> str:
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`" if text else "(empty)"


def render_markdown(report: dict[str, Any]) -> str:
    models = report["models"]
    pair = "candidate" in models
    lines = ["# repopilot evaluation", ""]
    for role, info in models.items():
        lines.append(f"- {role}: `{info['path']}` ({info['parameters']:,} parameters, context {info['context']})")
    dataset = report["dataset"]
    lines.append(f"- dataset: `{dataset['path']}` (version {dataset['dataset_version']})")
    settings = report["settings"]
    lines.append(
        f"- seed {settings['seed']}, {settings['bootstrap']} bootstrap resamples over files, "
        f"wall time {report['wall_seconds']:.1f} s"
    )
    if pair:
        outcome = report["gate"]
        head = "FAIL: the candidate is worse" if outcome["worse"] else "PASS: the candidate is not worse"
        applied = "" if outcome["applied"] else " (not enforced: run with --gate to exit 3 on FAIL)"
        lines += ["", f"## Gate: {head}{applied}", ""]
        lines += [f"- {reason}" for reason in outcome["reasons"]]
        lines.append(f"- rule: {outcome['rule']}.")
    for split, summary in report["splits"].items():
        sample = report["samples"][split]
        if split == "time":
            where = (
                f"files changed in {sample['since_commit'][:12]}..{sample['until_commit'][:12]} of `{sample['repo']}`"
            )
        elif split == "public":
            where = f"public code in `{sample['folder']}`: the forgetting check"
        else:
            where = "the dataset's validation records"
        lines += [
            "",
            f"## Split `{split}`: {summary['files']} files, {summary['lines']} lines, "
            f"{summary['internal_lines']} lines using internal identifiers, {summary['identifier_uses']} uses "
            f"recalled on ({where})",
            "",
        ]
        if summary["files"] < FEW_FILES:
            lines += [f"Few files (< {FEW_FILES}): the intervals are wide, read them with care.", ""]
        if pair:
            lines += [
                "| metric | baseline | candidate | delta | 95% CI | ratio (95% CI) | verdict |",
                "|---|---:|---:|---:|---|---|---|",
            ]
        else:
            lines += ["| metric | value | 95% CI |", "|---|---:|---|"]
        for metric in METRICS:
            entry = summary["metrics"][metric.name]
            ci = entry["ci"]
            arrow = "higher" if metric.higher_is_better else "lower"
            label = f"{metric.name} ({arrow} is better)"
            if pair:
                ci_text = (
                    "n/a" if ci is None else f"{_fmt_delta(ci[0], metric.name)} .. {_fmt_delta(ci[1], metric.name)}"
                )
                lines.append(
                    f"| {label} | {_fmt(entry['baseline'], metric.name)} | {_fmt(entry['candidate'], metric.name)} "
                    f"| {_fmt_delta(entry['delta'], metric.name)} | {ci_text} | {_ratio(entry)} | {entry['verdict']} |"
                )
            else:
                ci_text = "n/a" if ci is None else f"{_fmt(ci[0], metric.name)} .. {_fmt(ci[1], metric.name)}"
                lines.append(f"| {label} | {_fmt(entry['value'], metric.name)} | {ci_text} |")
        lines += _context_lines(summary.get("context"))
    if report["examples"]:
        roles = list(models)
        lines += ["", "## Examples: lines using internal identifiers", ""]
        lines += ["| file:line | reference | " + " | ".join(roles) + " |", "|---|---|" + "---|" * len(roles)]
        for example in report["examples"]:
            answers = " | ".join(_cell(example["answers"][role]) for role in roles)
            lines.append(f"| {example['path']}:{example['line']} | {_cell(example['reference'])} | {answers} |")
    return "\n".join(lines) + "\n"


_CONTEXT_LABELS = {
    "served": "candidate vs baseline, both with context",
    "baseline": "baseline: without vs with context",
    "candidate": "candidate: without vs with context",
    "model": "without vs with context",
}


def _context_lines(comparisons: dict[str, Any] | None) -> list[str]:
    """The ``--context repo`` table of a split: each model without vs with repository context, and the pair as
    served."""
    if not comparisons:
        return []
    lines = ["", "Repository context (`--context repo`):", ""]
    lines += ["| comparison | metric | from | to | delta (95% CI) | verdict |", "|---|---|---:|---:|---|---|"]
    for name, summary in comparisons.items():
        for metric, entry in summary["metrics"].items():
            ci = entry["ci"]
            ci_text = "" if ci is None else f" ({_fmt_delta(ci[0], metric)} .. {_fmt_delta(ci[1], metric)})"
            values = f"{_fmt(entry['baseline'], metric)} | {_fmt(entry['candidate'], metric)}"
            delta = f"{_fmt_delta(entry['delta'], metric)}{ci_text}"
            lines.append(f"| {_CONTEXT_LABELS.get(name, name)} | {metric} | {values} | {delta} | {entry['verdict']} |")
    return lines


def write_report(out_dir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / REPORT_MD
    write_bytes_atomic(markdown, render_markdown(report).encode("utf-8"))
    data = out_dir / REPORT_JSON
    write_json_atomic(data, report)
    return data, markdown
