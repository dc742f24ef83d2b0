"""Paired bootstrap intervals, verdicts and the gate, on per-file tables with known answers."""

from __future__ import annotations

import numpy as np

from pipelines.evaluate.compare import BETTER, BY_NAME, TOLERATED, UNCLEAR, WORSE, gate, summarize_split, verdict


def _table(rng: np.random.Generator, files: int, loss: float, exact: float, internal_exact: float) -> dict:
    tokens = rng.integers(50, 400, size=files).astype(float)
    lines = np.full(files, 8.0)
    internal = np.full(files, 4.0)
    return {
        "nll": tokens * (loss + rng.normal(0, 0.2, size=files)),
        "tokens": tokens,
        "bytes": tokens * 3.5,
        "lines": lines,
        "exact": rng.binomial(8, exact, size=files).astype(float),
        "edit": lines * exact,
        "internal_lines": internal,
        "internal_exact": rng.binomial(4, internal_exact, size=files).astype(float),
        "internal_edit": internal * internal_exact,
    }


def _pair(base: dict, cand: dict, files: int, tolerance: float = 0.01) -> dict:
    mask = np.ones(files, dtype=bool)
    return summarize_split({"baseline": base, "candidate": cand}, mask, 1000, 0, tolerance)


def test_point_values_are_ratios_of_sums_over_files() -> None:
    base = {
        "nll": np.array([10.0, 30.0]),
        "tokens": np.array([10.0, 10.0]),
        "bytes": np.array([40.0, 40.0]),
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


def test_gate_fails_on_a_clear_drop_in_internal_exact_match() -> None:
    rng = np.random.default_rng(2)
    files = 60
    base = _table(rng, files, loss=2.0, exact=0.4, internal_exact=0.5)
    worse = {**base, "internal_exact": np.maximum(base["internal_exact"] - 2, 0)}
    outcome = gate({"time": _pair(base, worse, files)}, same_tokenizer=True, tolerance=0.01)
    assert outcome["worse"]
    assert outcome["reasons"][0].startswith("time: internal_exact_match fell by")
    assert not gate({"time": _pair(worse, base, files)}, True, 0.01)["worse"]


def test_gate_tolerates_a_loss_rise_within_tolerance_but_not_beyond() -> None:
    rng = np.random.default_rng(3)
    files = 60
    base = _table(rng, files, loss=2.0, exact=0.4, internal_exact=0.5)
    slightly = {**base, "nll": base["nll"] * 1.004}  # +0.4%: clearly above 0, within the 1% tolerance
    clearly = {**base, "nll": base["nll"] * 1.05}
    assert _pair(base, slightly, files)["metrics"]["loss"]["verdict"] == TOLERATED
    assert not gate({"validation": _pair(base, slightly, files)}, True, 0.01)["worse"]
    outcome = gate({"validation": _pair(base, clearly, files)}, True, 0.01)
    assert outcome["worse"] and "validation: loss rose by" in outcome["reasons"][0]
    assert gate({"validation": _pair(base, slightly, files)}, True, 0.0)["worse"]  # no tolerance at all


def test_gate_uses_bits_per_byte_when_tokenizers_differ_and_exact_match_without_internal_lines() -> None:
    rng = np.random.default_rng(4)
    files = 60
    base = _table(rng, files, loss=2.0, exact=0.4, internal_exact=0.5)
    # More tokens for the same bytes and the same total nll: per-token loss falls, bits per byte do not move.
    finer = {**base, "tokens": base["tokens"] * 2}
    summary = _pair(base, finer, files)
    assert summary["metrics"]["loss"]["verdict"] == BETTER
    assert gate({"time": summary}, same_tokenizer=False, tolerance=0.01)["loss_metric"] == "bits_per_byte"
    noisier = {**finer, "nll": base["nll"] * 1.1}  # per-token loss still "better", bits per byte worse
    outcome = gate({"time": _pair(base, noisier, files)}, same_tokenizer=False, tolerance=0.01)
    assert outcome["worse"] and "bits_per_byte" in outcome["reasons"][0]
    assert not gate({"time": _pair(base, noisier, files)}, same_tokenizer=True, tolerance=0.01)["worse"]
    # No line uses internal identifiers: the exact match over all lines decides.
    plain = {**base, "internal_lines": np.zeros(files), "internal_exact": np.zeros(files)}
    dropped = {**plain, "exact": np.maximum(plain["exact"] - 3, 0)}
    outcome = gate({"time": _pair(plain, dropped, files)}, True, 0.01)
    assert outcome["worse"] and "exact_match fell" in outcome["reasons"][0]
    assert "time/exact_match" in outcome["checked"]
