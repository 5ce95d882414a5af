"""bench/parity.py's statistics: per-turn eval records add up to the report's τ, and the bootstrap
interval over questions matches the delta-method interval of a ratio estimator."""

from __future__ import annotations

import importlib.util
import math
import random
from pathlib import Path

import pytest

from draftsmith.eval.report import BenchmarkResult, TurnResult, benchmark_summary
from draftsmith.eval.spec_decode import Generation

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def parity():
    spec = importlib.util.spec_from_file_location("bench_parity", ROOT / "bench" / "parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(seed: int, questions: int, depth: int = 5) -> BenchmarkResult:
    rng = random.Random(seed)
    result = BenchmarkResult("mtbench", depth, 1, depth + 1)
    for q in range(questions):
        for turn in range(2):
            accepted = [min(depth, int(rng.expovariate(1.5))) for _ in range(rng.randint(5, 40))]
            emitted = [a + 1 for a in accepted]
            tokens = list(range(1 + sum(emitted)))
            result.turns.append(TurnResult(f"q{q}", turn, 10, Generation(tokens, 1.0, emitted, accepted)))
    return result


def test_turn_stats_add_up_to_the_pooled_figures(parity):
    s = benchmark_summary(_result(0, 7))
    assert len(s["turn_stats"]) == s["turns"] == 14
    rows = parity.per_question(s)
    assert len(rows) == 7
    emitted, steps = sum(r[0] for r in rows.values()), sum(r[1] for r in rows.values())
    assert steps == s["verify_steps"]
    assert emitted / steps == pytest.approx(s["tau"])
    for depth in range(5):
        assert sum(r[2 + depth] for r in rows.values()) / steps == pytest.approx(s["accept_rate"][depth])


def test_bootstrap_matches_the_delta_method(parity):
    rows = list(parity.per_question(benchmark_summary(_result(1, 200))).values())
    lo, hi = parity.bootstrap(rows, 4000, seed=0)
    n = len(rows)
    e, s = [r[0] for r in rows], [r[1] for r in rows]
    tau = sum(e) / sum(s)
    mean_s = sum(s) / n
    # delta method: Var(τ̂) ≈ Σ (e_i − τ s_i)² / (n · mean_s)² ... per question, over n questions
    var = sum((ei - tau * si) ** 2 for ei, si in zip(e, s)) / (n - 1) / n / mean_s ** 2
    half = 1.96 * math.sqrt(var)
    assert lo < tau < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    assert parity.bootstrap(rows, 4000, seed=0) == (lo, hi)            # seeded


def test_identical_questions_give_a_point_interval(parity):
    rows = [[30.0, 20.0, 5.0]] * 12
    assert parity.bootstrap(rows, 500, seed=3) == (1.5, 1.5)


def test_verdict(parity):
    a = {"tau": 1.40, "ci_low": 1.35, "ci_high": 1.45}
    assert parity.verdict(a, {"tau": 1.38, "ci_low": 1.33, "ci_high": 1.43}) == "ours >= SpecForge's"
    assert parity.verdict(a, {"tau": 1.42, "ci_low": 1.37, "ci_high": 1.47}).startswith("parity")
    assert parity.verdict(a, {"tau": 1.60, "ci_low": 1.55, "ci_high": 1.65}) == "ours lower beyond the intervals"


def test_depth_intervals_bracket_the_pooled_acceptance(parity):
    s = benchmark_summary(_result(2, 30))
    rows = list(parity.per_question(s).values())
    for depth in range(3):
        lo, hi = parity.bootstrap(rows, 2000, seed=1, numerator=2 + depth)
        assert lo <= s["accept_rate"][depth] <= hi
        assert 0.0 <= lo <= hi <= 1.0


def test_paired_ratio_of_a_draft_with_itself_and_a_uniform_lift(parity, tmp_path):
    """The paired interval of a draft against itself is the point 1; a draft whose every question
    emits 10 % more tokens per verify step has ratio 1.10 in every resample; its own τ interval is
    the unpaired bootstrap's, up to its draws."""
    import json

    summary = benchmark_summary(_result(4, 12))
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"benchmarks": [summary]}))
    base = parity.emitted_and_steps(str(path))
    assert base == parity.emitted_and_steps(str(path)) and len(base) == 12
    same = parity.paired(base, base, 2000, 0)
    assert same["ratio"] == same["ratio_ci"][0] == same["ratio_ci"][1] == 1.0 and same["wins"] == 0
    lifted = {q: (e * 1.1, s) for q, (e, s) in base.items()}
    r = parity.paired(base, lifted, 2000, 0)
    assert r["ratio"] == pytest.approx(1.1) and r["ratio_ci"] == pytest.approx([1.1, 1.1]) and r["wins"] == 12
    rows = [[e, s] for e, s in base.values()]
    lo, hi = parity.bootstrap(rows, 2000, 0)        # the unpaired bootstrap: other draws, the same spread
    assert same["tau_ci"] == pytest.approx([lo, hi], abs=0.01) and lo < same["tau"] < hi
    assert parity.emitted_and_steps(str(path)) == {q: tuple(v) for q, v in base.items()}
