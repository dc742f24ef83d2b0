"""Compare two models on identical samples: paired bootstrap intervals, verdicts, and the deploy gate.

Metrics, per split (``validation``, ``time``, ``public``), with the direction that is better:

- ``internal_identifier_recall`` (higher): over every use of an internal identifier in the sampled lines
  that use them, the share the model produces itself when given the file up to that point (greedy, see
  ``tasks.identifier_tasks`` and ``tasks.recalled``): what a developer sees when the name is needed;
- ``internal_identifier_loss`` (lower): mean negative log-likelihood (nats) of the tokens of internal
  identifiers anywhere in the held-out files, given the real text before them (teacher forcing: exact, no
  sampling, and it moves with a little training where exact matches do not yet);
- ``other_token_loss`` (lower): the same over every other token: the code around the team's names;
- ``loss`` (lower): mean negative log-likelihood per scored token, in nats (all tokens);
- ``perplexity`` (lower): ``exp(loss)``;
- ``bits_per_byte`` (lower): ``Σ nll / ln 2 / Σ UTF-8 bytes``, comparable across tokenizers;
- ``exact_match`` (higher): share of the uniformly sampled lines completed exactly;
- ``edit_similarity`` (higher): mean ``1 - levenshtein / max(len)`` over the same lines;
- ``internal_exact_match`` (higher): exact match over the sampled lines that use the repository's own
  identifiers (names defined in another of its files);
- ``internal_edit_similarity`` (higher): edit similarity over those lines.

Confidence intervals: a paired bootstrap over *files* (lines and tokens of one file are not independent).
Each of ``resamples`` draws (seeded) picks the split's files with replacement; every metric is recomputed
on the draw as a ratio of sums (``Σ nll / Σ tokens``, ``Σ recalled / Σ uses``, ...) for both models with
the same draw, and the 95% interval is the 2.5th-97.5th percentile of ``candidate - baseline`` (``ci``) and
of ``candidate / baseline`` (``ratio_ci``). A single model gets the same interval around its own value.

Verdict of a metric: ``better`` when the interval of the delta lies entirely on the improving side of 0,
``worse`` when it lies entirely on the other side (for the lower-is-better metrics: beyond the tolerance,
``tolerance × baseline value``; between 0 and that it is ``worse (within tolerance)``), otherwise
``no clear difference``.

THE GATE (``--gate``: exit code 3 when the candidate is worse, 0 otherwise). It decides on metrics that move
at the scale a laptop can train and refuses a model that got worse on ordinary code. The candidate is WORSE
when, in the repository's splits (``validation``, ``time``),

1. the 95% interval of Δ ``internal_identifier_recall`` lies entirely below 0; or
2. the 95% interval of Δ ``internal_identifier_loss`` lies entirely above ``loss_tolerance × baseline``
   (relative; default 0.01, i.e. 1%); or
3. the 95% interval of Δ ``other_token_loss`` lies entirely above the same tolerance: the model got worse
   at the code around the team's names;

or, with ``--context repo``, the 95% interval of Δ ``internal_identifier_recall`` of the two models as they are
served (both with repository context) lies entirely below 0; or, in the ``public`` split (public code,
``--public``), the 95% interval of Δ ``loss`` lies entirely above
``public_tolerance × baseline`` (default 0.1): it forgot general code. Per-token losses of different
tokenizers measure different things, so when the two tokenizers differ ``bits_per_byte`` replaces
``other_token_loss`` and ``loss``, and check 2 is skipped.

Anything else passes: the gate blocks on evidence of a regression, it does not demand proof of an
improvement, so a small sample passes more easily (the report flags splits with fewer than
``FEW_FILES`` files).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.evaluate.metrics import ModelResult
from pipelines.evaluate.samples import PUBLIC
from pipelines.evaluate.tasks import IdentifierTask, Task

FEW_FILES = 30
CONFIDENCE = 0.95
BETTER, WORSE, TOLERATED, UNCLEAR = "better", "worse", "worse (within tolerance)", "no clear difference"


@dataclass(frozen=True)
class Metric:
    name: str
    numerator: str
    denominator: str
    higher_is_better: bool
    transform: Callable[[np.ndarray], np.ndarray] | None = None


def _bits(x: np.ndarray) -> np.ndarray:
    return x / math.log(2)


def _exp(x: np.ndarray) -> np.ndarray:
    return np.exp(np.minimum(x, 700.0))


METRICS = (
    Metric("internal_identifier_recall", "ident_recalled", "ident_uses", higher_is_better=True),
    Metric("internal_identifier_loss", "ident_nll", "ident_tokens", higher_is_better=False),
    Metric("other_token_loss", "other_nll", "other_tokens", higher_is_better=False),
    Metric("loss", "nll", "tokens", higher_is_better=False),
    Metric("perplexity", "nll", "tokens", higher_is_better=False, transform=_exp),
    Metric("bits_per_byte", "nll", "bytes", higher_is_better=False, transform=_bits),
    Metric("exact_match", "exact", "lines", higher_is_better=True),
    Metric("edit_similarity", "edit", "lines", higher_is_better=True),
    Metric("internal_exact_match", "internal_exact", "internal_lines", higher_is_better=True),
    Metric("internal_edit_similarity", "internal_edit", "internal_lines", higher_is_better=True),
)
BY_NAME = {m.name: m for m in METRICS}
#: What repository context can change: the completions (the losses score the files as they are).
CONTEXT_METRICS = (
    "internal_identifier_recall", "exact_match", "edit_similarity", "internal_exact_match", "internal_edit_similarity"
)  # fmt: skip


def file_table(
    result: ModelResult, tasks: Sequence[Task], identifiers: Sequence[IdentifierTask], n_files: int
) -> dict[str, np.ndarray]:
    """Per-file sums of everything a metric is a ratio of."""
    files = np.array([t.file for t in tasks], dtype=np.int64)
    uniform = np.array([t.uniform for t in tasks], dtype=np.float64)
    internal = np.array([t.internal for t in tasks], dtype=np.float64)
    ident_files = np.array([t.file for t in identifiers], dtype=np.int64)

    def per_file(weights: np.ndarray, where: np.ndarray = files) -> np.ndarray:
        return np.bincount(where, weights=weights, minlength=n_files) if len(where) else np.zeros(n_files)

    scores = result.files
    return {
        "nll": scores.nll.astype(np.float64),
        "tokens": scores.tokens.astype(np.float64),
        "bytes": scores.bytes.astype(np.float64),
        "ident_nll": scores.ident_nll.astype(np.float64),
        "ident_tokens": scores.ident_tokens.astype(np.float64),
        "other_nll": scores.other_nll.astype(np.float64),
        "other_tokens": scores.other_tokens.astype(np.float64),
        "lines": per_file(uniform),
        "exact": per_file(uniform * result.exact),
        "edit": per_file(uniform * result.edit),
        "internal_lines": per_file(internal),
        "internal_exact": per_file(internal * result.exact),
        "internal_edit": per_file(internal * result.edit),
        "ident_uses": per_file(np.ones(len(identifiers)), ident_files),
        "ident_recalled": per_file(result.recalled.astype(np.float64), ident_files),
    }


def _value(metric: Metric, table: dict[str, np.ndarray], weights: np.ndarray) -> np.ndarray:
    """The metric under each row of ``weights`` (resample counts per file); NaN where undefined."""
    with np.errstate(divide="ignore", invalid="ignore"):
        den = weights @ table[metric.denominator]
        value = np.where(den > 0, (weights @ table[metric.numerator]) / np.where(den > 0, den, 1), np.nan)
    return metric.transform(value) if metric.transform else value


def _interval(values: np.ndarray) -> list[float] | None:
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def _number(x: np.ndarray) -> float | None:
    value = float(x[0])
    return None if math.isnan(value) else value


def bootstrap_weights(n_files: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_files) counts: how often each file is drawn in each resample."""
    rng = np.random.default_rng(seed)
    if n_files == 0:
        return np.zeros((resamples, 0))
    return rng.multinomial(n_files, np.full(n_files, 1.0 / n_files), size=resamples).astype(np.float64)


def verdict(metric: Metric, delta_ci: list[float] | None, baseline: float | None, tolerance: float) -> str:
    if delta_ci is None:
        return UNCLEAR
    low, high = delta_ci
    if metric.higher_is_better:
        return BETTER if low > 0 else WORSE if high < 0 else UNCLEAR
    if high < 0:
        return BETTER
    if low > 0:
        return WORSE if low > tolerance * abs(baseline or 0.0) else TOLERATED
    return UNCLEAR


def summarize_split(
    tables: dict[str, dict[str, np.ndarray]],
    mask: np.ndarray,
    resamples: int,
    seed: int,
    tolerance: float,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Metrics (all, or ``names``) of one split for one model (``tables`` has ``model``) or a pair (``baseline``,
    ``candidate``)."""
    roles = list(tables)
    sub = {role: {key: col[mask] for key, col in table.items()} for role, table in tables.items()}
    first = sub[roles[0]]
    weights = bootstrap_weights(int(mask.sum()), resamples, seed)
    ones = np.ones((1, int(mask.sum())))
    summary: dict[str, Any] = {
        "files": int(mask.sum()),
        "lines": int(first["lines"].sum()),
        "internal_lines": int(first["internal_lines"].sum()),
        "identifier_uses": int(first["ident_uses"].sum()),
        "identifier_tokens": int(first["ident_tokens"].sum()),
        "tokens": {role: int(sub[role]["tokens"].sum()) for role in roles},
        "metrics": {},
    }
    for metric in METRICS if names is None else [BY_NAME[n] for n in names]:
        point = {role: _number(_value(metric, sub[role], ones)) for role in roles}
        draws = {role: _value(metric, sub[role], weights) for role in roles}
        if len(roles) == 1:
            entry = {"value": point[roles[0]], "ci": _interval(draws[roles[0]])}
        else:
            base, cand = point["baseline"], point["candidate"]
            ci = _interval(draws["candidate"] - draws["baseline"])
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios = np.where(draws["baseline"] > 0, draws["candidate"] / draws["baseline"], np.nan)
            entry = {
                "baseline": base,
                "candidate": cand,
                "delta": None if base is None or cand is None else cand - base,
                "ci": ci,
                "ratio": cand / base if base and cand is not None else None,
                "ratio_ci": _interval(ratios),
                "verdict": verdict(metric, ci, base, tolerance),
            }
        entry["higher_is_better"] = metric.higher_is_better
        summary["metrics"][metric.name] = entry
    return summary


def context_pairs(tables: dict[str, dict], with_context: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """The comparisons repository context adds: each model without vs with it, and (for a pair) the two models
    as they would be served, both with it (``served``)."""
    pairs = {role: {"baseline": tables[role], "candidate": with_context[role]} for role in tables}
    if "candidate" in tables:
        pairs["served"] = {"baseline": with_context["baseline"], "candidate": with_context["candidate"]}
    return pairs


def gate(splits: dict[str, dict[str, Any]], same_tokenizer: bool, tolerance: float, public_tolerance: float) -> dict:
    """Apply the gate (see the module docstring) to the summaries of a pair; says why when worse."""
    loss_metric = "other_token_loss" if same_tokenizer else "bits_per_byte"
    reasons: list[str] = []
    checked: list[str] = []
    for split, summary in splits.items():
        metrics = summary["metrics"]
        if split == PUBLIC:
            checks = [("loss" if same_tokenizer else "bits_per_byte", public_tolerance)]
        else:
            checks = [("internal_identifier_recall", 0.0), (loss_metric, tolerance)]
            if same_tokenizer:
                checks.append(("internal_identifier_loss", tolerance))
        for name, allowed in checks:
            checked.append(f"{split}/{name}")
            reason = _regression(metrics[name], BY_NAME[name], allowed)
            if reason:
                reasons.append(f"{split}: {name} {reason}")
        served = summary.get("context", {}).get("served")
        if served:  # the two models as the server would use them
            checked.append(f"{split}/context/internal_identifier_recall")
            recall = "internal_identifier_recall"
            reason = _regression(served["metrics"][recall], BY_NAME[recall], 0.0)
            if reason:
                reasons.append(f"{split}: with repository context, {recall} {reason}")
    rule = (
        "worse when, in any split, the 95% CI of the change of internal_identifier_recall is entirely below 0, "
        f"or that of internal_identifier_loss or {loss_metric} (every token that is not an internal identifier) "
        f"is entirely above {tolerance:g} x the baseline's value; on the public split, when that of the loss is "
        f"entirely above {public_tolerance:g} x the baseline's"
    )
    return {"worse": bool(reasons), "reasons": reasons, "checked": checked, "loss_metric": loss_metric, "rule": rule}


def _regression(entry: dict[str, Any], metric: Metric, allowed: float) -> str | None:
    """Why a metric's change is a regression beyond ``allowed`` x its baseline value, or None."""
    ci = entry["ci"]
    if ci is None:
        return None
    if metric.higher_is_better:
        return f"fell by {-entry['delta']:.4f} (95% CI {ci[0]:.4f} to {ci[1]:.4f})" if ci[1] < 0 else None
    limit = allowed * abs(entry["baseline"] or 0.0)
    if ci[0] > limit:
        return f"rose by {entry['delta']:.4f} (95% CI {ci[0]:.4f} to {ci[1]:.4f}, tolerance {limit:.4f})"
    return None
