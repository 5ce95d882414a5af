"""demo --budget sizing (draftsmith/demo/budget.py): the plan fits the budget and uses it.

Pure arithmetic on given throughputs; no model runs, no wall-clock assertion.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from draftsmith.demo import budget
from draftsmith.demo.budget import DataShape, Throughput, TauFit, eval_seconds, plan_budget
from draftsmith.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
TP = Throughput(hidden_states_tok_s=500.0, train_tok_s=300.0, plain_tok_s=15.0, spec_step_s=0.1, load_s=5.0)
SHAPE = DataShape(tokens_per_sample=470.0, supervised_per_sample=345.0, kept_ratio=0.886, available=5000)
FIT = TauFit(a=1.0, b=0.03, lo_tokens=5_000, hi_tokens=300_000, source="test", gamma=0.3)
EVAL = dict(num_questions=10, max_new_tokens=128)


def cost(conversations: int, epochs: int, tp: Throughput = TP, shape: DataShape = SHAPE, spent: float = 0.0) -> float:
    """The reference cost of a plan, written out independently of plan_budget."""
    per_hs = shape.tokens_per_sample / tp.hidden_states_tok_s
    per_train = shape.tokens_per_sample / tp.train_tok_s
    eval_tokens = 2 * 10 * 128
    return (conversations * per_hs + conversations * epochs * per_train + eval_tokens / tp.plain_tok_s
            + eval_tokens * tp.spec_step_s + 4 * tp.load_s + spent)


@pytest.mark.parametrize("minutes", [15, 20, 30, 60, 120])
def test_plan_fits_the_budget_and_uses_it(minutes):
    b = minutes * 60.0
    plan = plan_budget(b, TP, SHAPE, fit=FIT, spent_s=30.0, **EVAL)
    assert plan.num_epochs == 1                       # gamma 0.3: fresh conversations beat repeated epochs here
    assert plan.total_s == pytest.approx(cost(plan.conversations, 1, spent=30.0))
    assert plan.total_s <= b                          # fits
    assert cost(plan.conversations + 1, 1, spent=30.0) > b      # one more conversation would not
    assert plan.trained_tokens == int(plan.conversations * SHAPE.supervised_per_sample)
    assert plan.num_samples * SHAPE.kept_ratio >= plan.conversations - 1e-9  # enough asked for to keep that many
    assert plan.expected_tau == pytest.approx(FIT.a + FIT.b * __import__("math").log2(plan.trained_tokens))


def best_mix(b: float, shape: DataShape, fit: TauFit, spent: float = 0.0) -> float:
    """The highest τ the fit expects of any conversations × epochs that fit in b (brute force)."""
    kept_max = int(shape.available * shape.kept_ratio)
    return max(fit.predict(n * shape.supervised_per_sample, e)
               for e in range(1, budget.MAX_EPOCHS + 1) for n in range(budget.MIN_SAMPLES, kept_max + 1)
               if cost(n, e, shape=shape, spent=spent) <= b)


def test_small_pool_spends_the_rest_on_epochs():
    shape = DataShape(tokens_per_sample=470.0, supervised_per_sample=345.0, kept_ratio=0.5, available=200)
    b = 60 * 60.0
    plan = plan_budget(b, TP, shape, fit=FIT, **EVAL)
    assert plan.conversations == 100                  # every available conversation kept
    assert 1 < plan.num_epochs <= budget.MAX_EPOCHS
    assert cost(100, plan.num_epochs, shape=shape) <= b
    if plan.num_epochs < budget.MAX_EPOCHS:
        assert cost(100, plan.num_epochs + 1, shape=shape) > b
    assert plan.num_samples == 200


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.6, 1.0])
@pytest.mark.parametrize("minutes", [15, 40, 120])
def test_plan_is_the_best_mix_that_fits(gamma, minutes):
    """Conversations against epochs: the plan's expected τ is the best of every mix that fits."""
    from dataclasses import replace

    fit = replace(FIT, gamma=gamma)
    shape = replace(SHAPE, available=3000)
    b = minutes * 60.0
    plan = plan_budget(b, TP, shape, fit=fit, **EVAL)
    assert cost(plan.conversations, plan.num_epochs, shape=shape) <= b
    assert plan.expected_tau == pytest.approx(best_mix(b, shape, fit), abs=1e-9)
    assert plan.expected_tau == pytest.approx(fit.predict(plan.conversations * shape.supervised_per_sample,
                                                          plan.num_epochs))
    assert plan.trained_tokens == int(plan.conversations * shape.supervised_per_sample * plan.num_epochs)


def test_what_an_epoch_is_worth_decides_the_mix():
    """gamma 0: a repeated epoch adds nothing, so one epoch of as many conversations as fit; gamma 1: an
    epoch is worth fresh data and costs less (no hidden states), so the most epochs."""
    from dataclasses import replace

    fresh = plan_budget(40 * 60.0, TP, SHAPE, fit=replace(FIT, gamma=0.0), **EVAL)
    repeat = plan_budget(40 * 60.0, TP, SHAPE, fit=replace(FIT, gamma=1.0), **EVAL)
    assert fresh.num_epochs == 1 and repeat.num_epochs == budget.MAX_EPOCHS
    assert repeat.conversations < fresh.conversations < repeat.trained_tokens / SHAPE.supervised_per_sample


def test_twice_the_budget_buys_more_and_the_fit_says_how_much():
    one = plan_budget(20 * 60.0, TP, SHAPE, fit=FIT, **EVAL)
    two = plan_budget(40 * 60.0, TP, SHAPE, fit=FIT, **EVAL)
    assert two.trained_tokens > 2 * one.trained_tokens   # the eval is a fixed cost: 2x budget > 2x data
    assert two.expected_tau > one.expected_tau
    text = budget.describe(one, two, FIT)
    assert f"{one.expected_tau:.2f}" in text and f"{two.expected_tau:.2f}" in text


def test_extrapolation_is_marked():
    plan = plan_budget(600 * 60.0, TP, SHAPE, fit=FIT, **EVAL)
    assert plan.trained_tokens > FIT.hi_tokens and plan.extrapolated
    assert "extrapolated" in budget.describe(plan, None, FIT)


def test_too_small_a_budget_is_an_input_error_naming_the_flag():
    b = eval_seconds(TP, **EVAL) + 4 * TP.load_s + 1.0          # the eval fits, no conversation does
    with pytest.raises(InputError, match="--budget"):
        plan_budget(b, TP, SHAPE, fit=FIT, **EVAL)


def test_regenerate_costs_generation_per_conversation():
    plain = plan_budget(30 * 60.0, TP, SHAPE, fit=FIT, **EVAL)
    regen = plan_budget(30 * 60.0, TP, SHAPE, fit=FIT, regenerate=128, **EVAL)
    assert regen.conversations < plain.conversations
    assert regen.seconds["regenerate-data"] == pytest.approx(regen.conversations * 128 / TP.plain_tok_s)
    assert regen.total_s <= 30 * 60.0


def test_shipped_fit_is_the_measured_one():
    """budget.TAU_FIT carries the fit of bench/results/tau_curve_sharegpt.json (not a stale copy)."""
    file, _, key = budget.TAU_FIT.source.partition("#")
    fit = json.loads((ROOT / file).read_text())["fits"][key]
    assert budget.TAU_FIT.a == pytest.approx(fit["a"], abs=5e-4)
    assert budget.TAU_FIT.b == pytest.approx(fit["b"], abs=5e-5)
    assert budget.TAU_FIT.gamma == pytest.approx(fit["gamma"], abs=5e-3)
    assert (budget.TAU_FIT.lo_tokens, budget.TAU_FIT.hi_tokens) == (fit["lo_tokens"], fit["hi_tokens"])


def test_apply_budget_sizes_the_config_and_reuses_its_plan(tmp_path, monkeypatch):
    """The demo's use, with the measurements faked: num_samples/num_epochs set, the plan saved and reused."""
    from draftsmith.demo.settings import DemoConfig

    calls = []

    def fake_sample(cfg, run_dir):
        calls.append("shape")
        return SHAPE, "model", {"hidden_states_tok_s": TP.hidden_states_tok_s, "train_tok_s": TP.train_tok_s}

    monkeypatch.setattr(budget, "measure_sample", fake_sample)
    monkeypatch.setattr(budget, "calibrate", lambda *a, **k: TP)
    cfg = DemoConfig(budget=30.0, device="cpu")
    sized, text = budget.apply_budget(cfg, tmp_path, set())
    saved = json.loads((tmp_path / budget.PLAN_FILE).read_text())
    spent = saved["plan"]["seconds"]["calibration"]           # the real seconds the fake measuring took
    plan = plan_budget(30 * 60.0, TP, SHAPE, num_questions=cfg.num_questions, max_new_tokens=cfg.max_new_tokens,
                       spent_s=spent, share=budget.PLANNED_SHARE)
    assert (sized.num_samples, sized.num_epochs) == (plan.num_samples, plan.num_epochs)
    assert sized.num_samples != cfg.num_samples and f"{sized.num_samples} conversations" in text
    assert saved["plan"]["total_s"] == pytest.approx(plan.total_s) and plan.total_s <= budget.PLANNED_SHARE * 30 * 60.0
    again, text2 = budget.apply_budget(cfg, tmp_path, set())      # a rerun (resume) measures nothing
    assert calls == ["shape"] and again == sized and text2 == text
    other, _ = budget.apply_budget(DemoConfig(budget=60.0, device="cpu"), tmp_path, set())
    assert calls == ["shape", "shape"] and other.num_samples > sized.num_samples
    with pytest.raises(InputError, match="--num-samples"):
        budget.apply_budget(cfg, tmp_path, {"num_samples"})


def test_measure_sample_times_the_real_stages_on_a_tiny_target(tiny_llama_dir, tmp_path, monkeypatch):
    """The throughputs the plan uses come from the demo's own hidden-states and train stages run on the
    sample (their real outputs are in the folder), the shape from its build-dataset manifest."""
    import datasets

    from draftsmith.demo.settings import DemoConfig
    from draftsmith.features import FeatureStore

    monkeypatch.setattr(budget, "SHAPE_CONVERSATIONS", 16)
    monkeypatch.setattr(budget, "SAMPLE_CONVERSATIONS", 10)
    cfg = DemoConfig(budget=30.0, device="cpu", target_model_path=str(tiny_llama_dir), max_length=128,
                     draft_vocab_size=64, ttt_length=2)
    shape, model_path, stages = budget.measure_sample(cfg, tmp_path / "budget")
    big = datasets.load_from_disk(str(tmp_path / "budget" / "shape" / "dataset"))      # the shape's sample
    tokens = sum(len(r) for r in big["input_ids"])
    assert shape.kept_ratio == len(big) / 16 and shape.tokens_per_sample == pytest.approx(tokens / len(big))
    assert shape.supervised_per_sample == pytest.approx(sum(sum(m) for m in big["loss_mask"]) / len(big))
    lines = (tmp_path / "budget" / "shape" / "data" / "sharegpt" / "sharegpt_train.jsonl").read_text().splitlines()
    kept_ids = set(big["id"])
    assert len(shape.kept_prefix) == len(lines) == 16
    assert list(shape.kept_prefix) == [sum(json.loads(x)["id"] in kept_ids for x in lines[:n + 1]) for n in range(16)]
    ds = datasets.load_from_disk(str(tmp_path / "budget" / "dataset"))                 # the timed sample
    assert FeatureStore.open(tmp_path / "budget" / "features").manifest["num_samples"] == len(ds)
    steps = (tmp_path / "budget" / "train" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(steps[-1])["step"] == len(ds)           # one epoch, batch 1
    assert stages["hidden_states_tok_s"] > 0 and stages["train_tok_s"] > 0
    tp = budget.calibrate(model_path, device="cpu", draft_vocab_size=64, draft_depth=2)
    assert tp.plain_tok_s > 0 and tp.spec_step_s > 0 and tp.load_s > 0


def test_the_report_says_how_the_run_kept_to_its_plan(tmp_path):
    """add_to_report: planned against measured seconds per stage, and the totals (calibration included)."""
    plan = {"budget_s": 2400.0, "total_s": 2300.0,
            "seconds": {"calibration": 100.0, "hidden-states": 900.0, "train": 800.0, "eval": 500.0}}
    (tmp_path / budget.PLAN_FILE).write_text(json.dumps({"plan": plan}))
    report = tmp_path / "report"
    report.mkdir()
    (report / "demo_report.md").write_text("# demo\n")
    (report / "demo_report.json").write_text(json.dumps({"summary": {}}))
    took = {"prepare-data": 1.0, "build-dataset": 5.0, "regenerate-data": 0.0, "hidden-states": 960.0, "train": 780.0,
            "export": 1.0,
            "eval": 403.0}                  # 2,250 s with the calibration
    line = budget.add_to_report(report, tmp_path, "the plan", took)
    check = json.loads((report / "demo_report.json").read_text())["budget_check"]
    assert check["took_s"] == pytest.approx(100.0 + sum(took.values())) and check["planned_s"] == 2300.0
    assert check["stages"]["hidden-states"] == {"planned_s": 900.0, "took_s": 960.0}
    assert check["stages"]["train"] == {"planned_s": 800.0, "took_s": 780.0}
    assert "took 37.5 min" in line and "hidden-states 16.0 vs 15.0 planned" in line
    assert "Budget: the plan" in (report / "demo_report.md").read_text()
    assert "regenerate-data" not in check["stages"]          # not planned: no --regenerate


def test_asked_for_is_exact_within_the_measured_prefix():
    """prepare-data takes the first --num-samples rows; build-dataset's skips cluster (the packaged ShareGPT
    skips 17 % of its first 256 rows, 11 % of its first 500): the plan asks for the fewest rows whose
    measured prefix keeps its count, and past the prefix adds rows at the prefix's ratio."""
    prefix = (1, 1, 1, 2, 3, 3, 4, 5, 6, 7)       # rows 2, 3 and 6 skipped
    shape = DataShape(tokens_per_sample=400.0, supervised_per_sample=300.0, kept_ratio=0.5, kept_prefix=prefix)
    assert [shape.asked_for(k) for k in range(1, 8)] == [1, 4, 5, 7, 8, 9, 10]
    assert shape.asked_for(14) == 10 + 14                 # 7 more at 0.5
    assert [shape.kept_among(n) for n in (0, 1, 3, 4, 10, 20)] == [0, 1, 1, 2, 7, 12]
    for k in range(1, 40):
        assert shape.kept_among(shape.asked_for(k)) >= k and shape.kept_among(shape.asked_for(k) - 1) < k
    tp = Throughput(hidden_states_tok_s=400.0, train_tok_s=450.0, plain_tok_s=20.0, spec_step_s=0.3, load_s=3.0)
    plan = plan_budget(1800.0, tp, shape, num_questions=2, max_new_tokens=16)
    assert plan.num_samples == shape.asked_for(plan.conversations)


def test_a_plan_fills_its_share_of_the_budget_and_keeps_the_whole_budget_for_the_report():
    """`--budget` plans PLANNED_SHARE of the minutes (a sample can run faster than the sustained run): the
    same mix as a full plan of that many minutes, reported against the minutes the user gave."""
    from dataclasses import replace

    shape = replace(SHAPE, available=3000)
    share = plan_budget(40 * 60.0, TP, shape, fit=FIT, share=budget.PLANNED_SHARE, **EVAL)
    full = plan_budget(40 * 60.0 * budget.PLANNED_SHARE, TP, shape, fit=FIT, **EVAL)
    assert (share.conversations, share.num_epochs, share.seconds) == (full.conversations, full.num_epochs, full.seconds)
    assert share.budget_s == 40 * 60.0 and share.total_s <= budget.PLANNED_SHARE * share.budget_s
    assert 0.8 <= budget.PLANNED_SHARE < 1.0
