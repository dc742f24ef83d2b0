"""Paired bootstrap intervals, verdicts and the gate, on per-file tables with known answers."""

from __future__ import annotations

import numpy as np

from pipelines.evaluate.compare import BETTER, BY_NAME, TOLERATED, UNCLEAR, WORSE, gate, summarize_split, verdict


def _table(
    rng: np.random.Generator, files: int, loss: float, exact: float, internal_exact: float, recall: float = 0.3
) -> dict:
    tokens = rng.integers(50, 400, size=files).astype(float)
    ident_tokens = np.round(tokens * 0.1)
    other_nll = (tokens - ident_tokens) * (loss + rng.normal(0, 0.2, size=files))
    ident_nll = ident_tokens * (2 * loss + rng.normal(0, 0.4, size=files))
    lines = np.full(files, 8.0)
    internal = np.full(files, 4.0)
    return {
        "nll": other_nll + ident_nll,
        "tokens": tokens,
        "bytes": tokens * 3.5,
        "ident_nll": ident_nll,
        "ident_tokens": ident_tokens,
        "other_nll": other_nll,
        "other_tokens": tokens - ident_tokens,
        "lines": lines,
        "exact": rng.binomial(8, exact, size=files).astype(float),
        "edit": lines * exact,
        "internal_lines": internal,
        "internal_exact": rng.binomial(4, internal_exact, size=files).astype(float),
        "internal_edit": internal * internal_exact,
        "ident_uses": np.full(files, 6.0),
        "ident_recalled": rng.binomial(6, recall, size=files).astype(float),
    }


def _scaled(table: dict, ident: float = 1.0, other: float = 1.0) -> dict:
    """The same files with the identifier and the other tokens' losses multiplied."""
    ident_nll, other_nll = table["ident_nll"] * ident, table["other_nll"] * other
    return {**table, "ident_nll": ident_nll, "other_nll": other_nll, "nll": ident_nll + other_nll}


def _pair(base: dict, cand: dict, files: int, tolerance: float = 0.01) -> dict:
    mask = np.ones(files, dtype=bool)
    return summarize_split({"baseline": base, "candidate": cand}, mask, 1000, 0, tolerance)


def test_point_values_are_ratios_of_sums_over_files() -> None:
    base = {
        "nll": np.array([10.0, 30.0]),
        "tokens": np.array([10.0, 10.0]),
        "bytes": np.array([40.0, 40.0]),
        "ident_nll": np.array([4.0, 12.0]),
        "ident_tokens": np.array([2.0, 2.0]),
        "other_nll": np.array([6.0, 18.0]),
        "other_tokens": np.array([8.0, 8.0]),
        "ident_uses": np.array([3.0, 1.0]),
        "ident_recalled": np.array([1.0, 1.0]),
        "lines": np.array([2.0, 2.0]),
        "exact": np.array([1.0, 0.0]),
        "edit": np.array([1.5, 0.5]),
        "internal_lines": np.array([0.0, 1.0]),
        "internal_exact": np.array([0.0, 1.0]),
        "internal_edit": np.array([0.0, 1.0]),
    }
    metrics = summarize_split({"model": base}, np.ones(2, dtype=bool), 200, 0, 0.01)["metrics"]
    assert metrics["loss"]["value"] == 2.0
    assert np.isclose(metrics["perplexity"]["value"], np.exp(2.0))
    assert np.isclose(metrics["bits_per_byte"]["value"], 40 / np.log(2) / 80)
    assert metrics["exact_match"]["value"] == 0.25
    assert metrics["edit_similarity"]["value"] == 0.5
    assert metrics["internal_exact_match"]["value"] == 1.0
    assert metrics["internal_identifier_loss"]["value"] == 4.0  # 16 nats over 4 identifier tokens
    assert metrics["other_token_loss"]["value"] == 1.5  # 24 nats over the 16 other tokens
    assert metrics["internal_identifier_recall"]["value"] == 0.5  # 2 of 4 uses
    low, high = metrics["loss"]["ci"]
    assert 1.0 <= low <= 2.0 <= high <= 3.0


def test_the_interval_covers_a_real_difference_and_is_zero_for_identical_models() -> None:
    rng = np.random.default_rng(1)
    files = 80
    base = _table(rng, files, loss=2.0, exact=0.3, internal_exact=0.2)
    better = {**base, "nll": base["nll"] * 0.8, "internal_exact": np.minimum(base["internal_exact"] + 1, 4)}
    summary = _pair(base, better, files)
    loss = summary["metrics"]["loss"]
    assert loss["ci"][0] < loss["delta"] < loss["ci"][1] < 0 and loss["verdict"] == BETTER
    internal = summary["metrics"]["internal_exact_match"]
    assert 0 < internal["ci"][0] <= 0.25 <= internal["ci"][1] and internal["verdict"] == BETTER
    same = _pair(base, base, files)
    for entry in same["metrics"].values():
        assert entry["delta"] == 0 and entry["ci"] == [0.0, 0.0] and entry["verdict"] == UNCLEAR


def test_verdicts_respect_direction_and_tolerance() -> None:
    loss, exact = BY_NAME["loss"], BY_NAME["exact_match"]
    assert verdict(loss, [-0.3, -0.1], 2.0, 0.01) == BETTER
    assert verdict(loss, [0.001, 0.01], 2.0, 0.01) == TOLERATED  # above 0, within 1% of 2.0
    assert verdict(loss, [0.05, 0.2], 2.0, 0.01) == WORSE
    assert verdict(loss, [-0.1, 0.2], 2.0, 0.01) == UNCLEAR
    assert verdict(exact, [0.01, 0.2], 0.3, 0.01) == BETTER
    assert verdict(exact, [-0.2, -0.01], 0.3, 0.01) == WORSE
    assert verdict(exact, None, None, 0.01) == UNCLEAR


def test_ratio_and_its_interval_for_a_doubled_recall() -> None:
    rng = np.random.default_rng(5)
    files = 80
    base = _table(rng, files, loss=2.0, exact=0.4, internal_exact=0.0, recall=0.2)
    doubled = {**base, "ident_recalled": base["ident_recalled"] * 2}
    entry = _pair(base, doubled, files)["metrics"]["internal_identifier_recall"]
    assert np.isclose(entry["ratio"], 2.0) and np.allclose(entry["ratio_ci"], [2.0, 2.0])
    assert entry["ci"][0] > 0 and entry["verdict"] == BETTER


def test_gate_fails_when_identifiers_got_worse_though_exact_match_did_not_move() -> None:
    rng = np.random.default_rng(2)
    files = 60
    base = _table(rng, files, loss=2.0, exact=0.0, internal_exact=0.0)
    forgot = _scaled(base, ident=1.2)  # the team's names are less likely; nothing else moved
    outcome = gate({"time": _pair(base, forgot, files)}, same_tokenizer=True, tolerance=0.01, public_tolerance=0.1)
    assert outcome["worse"] and outcome["reasons"] == [outcome["reasons"][0]]
    assert outcome["reasons"][0].startswith("time: internal_identifier_loss rose by")
    assert not gate({"time": _pair(forgot, base, files)}, True, 0.01, 0.1)["worse"]  # the other way round: better
    missed = {**base, "ident_recalled": np.maximum(base["ident_recalled"] - 2, 0)}
    outcome = gate({"time": _pair(base, missed, files)}, True, 0.01, 0.1)
    assert outcome["worse"] and "internal_identifier_recall fell by" in outcome["reasons"][0]


def test_gate_tolerates_a_rise_of_the_other_tokens_loss_within_tolerance_but_not_beyond() -> None:
    rng = np.random.default_rng(3)
    files = 60
    base = _table(rng, files, loss=2.0, exact=0.4, internal_exact=0.5)
    slightly, clearly = _scaled(base, other=1.004), _scaled(base, other=1.05)
    assert _pair(base, slightly, files)["metrics"]["other_token_loss"]["verdict"] == TOLERATED
    assert not gate({"validation": _pair(base, slightly, files)}, True, 0.01, 0.1)["worse"]
    outcome = gate({"validation": _pair(base, clearly, files)}, True, 0.01, 0.1)
    assert outcome["worse"] and "validation: other_token_loss rose by" in outcome["reasons"][0]
    assert gate({"validation": _pair(base, slightly, files)}, True, 0.0, 0.1)["worse"]  # no tolerance at all


def test_public_code_may_get_a_little_worse_but_not_past_its_tolerance() -> None:
    rng = np.random.default_rng(6)
    files = 60
    repo = _table(rng, files, loss=2.0, exact=0.1, internal_exact=0.1)
    public = _table(rng, files, loss=1.5, exact=0.1, internal_exact=0.0)
    learnt = _scaled(repo, ident=0.5, other=0.9)
    splits = {"time": _pair(repo, learnt, files), "public": _pair(public, _scaled(public, 1.05, 1.05), files)}
    assert not gate(splits, True, 0.01, 0.1)["worse"]  # 5% worse on public code: tolerated
    splits["public"] = _pair(public, _scaled(public, 1.2, 1.2), files)
    outcome = gate(splits, True, 0.01, 0.1)
    assert outcome["worse"] and outcome["reasons"][0].startswith("public: loss rose by")
    assert "public/loss" in outcome["checked"] and "time/internal_identifier_loss" in outcome["checked"]


def test_gate_uses_bits_per_byte_when_tokenizers_differ() -> None:
    rng = np.random.default_rng(4)
    files = 60
    base = _table(rng, files, loss=2.0, exact=0.4, internal_exact=0.5)
    # More tokens for the same bytes and the same total nll: per-token loss falls, bits per byte do not move.
    finer = {**base, "tokens": base["tokens"] * 2, "other_tokens": base["other_tokens"] * 2}
    summary = _pair(base, finer, files)
    assert summary["metrics"]["loss"]["verdict"] == BETTER
    assert gate({"time": summary}, False, 0.01, 0.1)["loss_metric"] == "bits_per_byte"
    noisier = {**_scaled(finer, 1.1, 1.1)}  # per-token loss still "better", bits per byte worse
    outcome = gate({"time": _pair(base, noisier, files)}, same_tokenizer=False, tolerance=0.01, public_tolerance=0.1)
    assert outcome["worse"] and "bits_per_byte" in outcome["reasons"][0]
    assert "time/internal_identifier_loss" not in outcome["checked"]
