"""Every target family SGLang or vLLM serves with EAGLE-3, end to end.

For each family a tiny random target is built from its transformers config class (8 layers,
so the default aux layers [2, 4, 5] exist; hidden 64; the real SmolLM2 tokenizer) and goes
through build-dataset -> hidden-states -> train online and offline -> export -> inspect ->
eval. What each row proves for its family:

- the hooked aux capture of training (`target/hf.py`) equals the `output_hidden_states` rows
  the eval (and the engines: the inputs of layers i) use, at the default aux layers;
- online and offline training see the same features (first-step loss equal);
- the export of a draft for that target passes `check_folder` against the target's config
  and `inspect` exits 0;
- speculative decoding with the exported draft reproduces the target's own greedy output
  token for token (lossless), through that family's KV cache (sliding windows, sinks, MoE).

Which engine serves which family (engine version, file:line) is in docs/serving.md, "Families".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from _train_helpers import write_conversations

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 49152          # the SmolLM2 tokenizer's
DRAFT_VOCAB = 256


@dataclass(frozen=True)
class Family:
    name: str
    config_class: str
    model_class: str
    settings: dict[str, Any] = field(default_factory=dict)


COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=2)

FAMILIES = [
    Family("llama", "LlamaConfig", "LlamaForCausalLM",
           dict(rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 1024},
                tie_word_embeddings=False)),
    Family("qwen2", "Qwen2Config", "Qwen2ForCausalLM",
           dict(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=True)),
    Family("qwen3", "Qwen3Config", "Qwen3ForCausalLM",
           dict(head_dim=32, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                tie_word_embeddings=True)),
    Family("qwen3_moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM",
           dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1,
                mlp_only_layers=[0], norm_topk_prob=True, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    Family("mistral", "MistralConfig", "MistralForCausalLM",
           dict(head_dim=16, sliding_window=24, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    Family("gemma3", "Gemma3TextConfig", "Gemma3ForCausalLM",
           dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=24, tie_word_embeddings=True,
                hidden_activation="gelu_pytorch_tanh",
                layer_types=["sliding_attention"] * 5 + ["full_attention"] + ["sliding_attention"] * 2,
                rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                 "full_attention": {"rope_type": "linear", "factor": 8.0,
                                                    "rope_theta": 1000000.0}})),
    # Phi-4-mini's shape: longrope over a partial rotary (3/4 of each head; 6 factors for 12 rotary dims)
    Family("phi3", "Phi3Config", "Phi3ForCausalLM",
           dict(tie_word_embeddings=False, max_position_embeddings=16384, original_max_position_embeddings=4096,
                rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                                 "short_factor": [1.0, 1.1, 1.2, 1.5, 2.0, 3.0],
                                 "long_factor": [1.0, 1.5, 2.0, 4.0, 8.0, 16.0],
                                 "original_max_position_embeddings": 4096})),
    Family("gpt_oss", "GptOssConfig", "GptOssForCausalLM",
           dict(head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=24, tie_word_embeddings=False,
                layer_types=["sliding_attention", "full_attention"] * 4,
                rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0,
                                 "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 4096})),
]


def build_target(family: Family, out: Path) -> Path:
    import transformers
    from transformers import AutoTokenizer

    from draftsmith import resources

    torch.manual_seed(1234)
    config = getattr(transformers, family.config_class)(**{**COMMON, **family.settings})
    model = getattr(transformers, family.model_class)(config).eval()
    with torch.no_grad():      # a peaked next-token distribution: greedy decoding is not a tie-break lottery
        model.get_output_embeddings().weight.mul_(30.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(resources.smollm2_dir()).save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda f: f.name)
def family_run(request, tmp_path_factory):
    """One family through every stage; the stages' outputs for the assertions."""
    from draftsmith.data.build import BuildConfig, build_dataset
    from draftsmith.export import ExportConfig, export_checkpoint
    from draftsmith.features.generate import HiddenStatesConfig, run_hidden_states
    from draftsmith.train.trainer import TrainConfig, train

    family: Family = request.param
    root = tmp_path_factory.mktemp(family.name)
    target = build_target(family, root / "target")
    data = write_conversations(root / "conversations.jsonl", 3, answer_words=12)
    dataset = build_dataset(BuildConfig(data_path=str(data), target_model_path=str(target), chat_template="hf",
                                        max_length=96, output_dir=str(root / "dataset"))).path
    store = root / "features"
    # bf16 target + bf16 codec: the store holds exactly what the online target computes
    run_hidden_states(HiddenStatesConfig(target_model_path=str(target), data_path=str(dataset), output_dir=str(store),
                                         dtype="bfloat16", codec="bf16", draft_vocab_size=DRAFT_VOCAB, batch_size=1,
                                         device="cpu", progress=False))
    common = dict(target_model_path=str(target), train_data_path=str(dataset), draft_vocab_size=DRAFT_VOCAB,
                  max_length=96, ttt_length=2, max_steps=2, batch_size=1, dtype="bfloat16", device="cpu",
                  save_interval=10_000, eval_interval=10_000, progress=False, learning_rate=1e-3)
    online = train(TrainConfig(mode="online", output_dir=str(root / "online"), **common))
    offline = train(TrainConfig(mode="offline", train_hidden_states_path=str(store), output_dir=str(root / "offline"),
                                **common))
    served = root / "served"
    report = export_checkpoint(ExportConfig(checkpoint=root / "online" / "final", output_dir=served,
                                            target_model_path=target))
    return dict(family=family, target=target, dataset=dataset, store=store, online=online, offline=offline,
                served=served, export_report=report, root=root)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_training_sees_the_same_features_online_and_offline(family_run):
    online, offline = _metrics(family_run["root"] / "online"), _metrics(family_run["root"] / "offline")
    assert [r["step"] for r in online] == [r["step"] for r in offline] == [1, 2]
    # the store is computed at a padded width, the online target at the row's own: bf16 rounding apart
    assert online[0]["loss_k"] == pytest.approx(offline[0]["loss_k"], rel=1e-3)
    assert all(torch.isfinite(torch.tensor(r["loss_k"])).all() for r in online + offline)


def test_captured_aux_features_are_the_layer_inputs(family_run):
    """target/hf.py's hooks (training) == output_hidden_states (eval; the inputs of layers i, which
    is what the engines capture), and the store holds what the bf16 target computes."""
    from transformers import AutoModelForCausalLM

    from draftsmith.eval.spec_decode import _Target
    from draftsmith.features import FeatureStore
    from draftsmith.target.hf import HFTarget

    sample = FeatureStore.open(family_run["store"])[0]
    ids = sample["input_ids"]
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(family_run["target"], dtype=dtype).eval()
        backend = HFTarget(model)
        try:
            feats = backend.features(ids[None])
            aux_layers = backend.aux_layers
        finally:
            backend.close()
        assert aux_layers == [2, 4, 5]
        if dtype == torch.bfloat16:
            stored, live = sample["aux_hidden_states"], feats["aux_hidden_states"][0].float()
            assert ((stored - live).norm(dim=-1) / live.norm(dim=-1)).max() < 1e-2   # bf16 rounding, other width
            continue
        with torch.no_grad():
            hs = model(input_ids=ids[None], output_hidden_states=True).hidden_states
        torch.testing.assert_close(feats["aux_hidden_states"][0], torch.cat([hs[i][0] for i in aux_layers], -1))
        _, aux = _Target(model, aux_layers).forward(ids, torch.arange(ids.numel()), None, want_aux=True)
        torch.testing.assert_close(aux, feats["aux_hidden_states"][0])


def test_export_and_inspect_accept_the_draft(family_run, capsys):
    from draftsmith import cli

    report = family_run["export_report"]
    assert report.ok, report.errors
    code = cli.run_command("inspect", [str(family_run["served"]), "--target-model-path", str(family_run["target"])])
    out = capsys.readouterr().out
    assert code == 0, out


def test_speculative_decoding_is_lossless(family_run, tmp_path):
    from draftsmith.eval.cli import EvalConfig, evaluate, load_models

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p", "turns": ["the cat sat on a mat and then it ran to the big house",
                                                        "seven blue birds"]}) + "\n")
    cfg = EvalConfig(target_model_path=family_run["target"], draft_model_path=family_run["served"],
                     benchmarks=[str(prompts)], draft_depth=[3], max_new_tokens=24, output_file=tmp_path / "r.json")
    tokenizer, model, draft = load_models(cfg)
    report = evaluate(cfg, tokenizer, model, draft, log=lambda *_: None)
    (summary,) = report["benchmarks"]
    assert report["lossless"] is True, summary["mismatches"]
    assert summary["turns"] == 2


def _global_rope(settings: dict) -> dict:
    """The target's rope as the family sets it; per-layer-type ropes (Gemma 3): the full-attention one."""
    rope = settings["rope_parameters"]
    return rope.get("full_attention", rope)


def test_engines_build_the_rope_the_draft_was_trained_with(family_run):
    """The exported config.json read by each engine's own rule gives the draft's rope: theta, type
    and the rotated share of each head (vLLM 0.33 layers/rotary_embedding/__init__.py:60-72 reads
    rope_parameters; SGLang 0.5.23 models/llama_eagle3.py:132-136 reads rope_parameters, and
    models/llama.py:199 the top-level partial_rotary_factor)."""
    from draftsmith.draft.model import Eagle3Draft, rotary_tables

    config = json.loads((family_run["served"] / "config.json").read_text())
    family: Family = family_run["family"]
    want = _global_rope(family.settings)
    head_dim = config["head_dim"]
    vllm_rotary = int(head_dim * config["rope_parameters"].get("partial_rotary_factor", 1.0))
    sglang_rotary = int(config.get("partial_rotary_factor", 1) * head_dim)
    target_rotary = int(head_dim * want.get("partial_rotary_factor", 1.0))
    draft = Eagle3Draft.from_pretrained(family_run["served"], embed_weight=torch.zeros(VOCAB, COMMON["hidden_size"]))
    cos, _ = rotary_tables(draft.config, torch.arange(4)[None], torch.float32)
    assert vllm_rotary == sglang_rotary == target_rotary == cos.shape[-1]
    for read in (config["rope_parameters"], config):          # what SGLang / vLLM take the theta from
        assert read["rope_theta"] == want["rope_theta"]
    # a longrope / dynamic target's draft takes the plain rope, which both engines serve alike (draft/rope.py)
    served_type = "default" if want["rope_type"] in ("longrope", "dynamic") else want["rope_type"]
    assert config["rope_parameters"]["rope_type"] == served_type


def test_tree_drafting_is_lossless_or_refused_for_sliding_windows(family_run):
    """topk > 1: full-attention targets decode a tree losslessly; a target with sliding-window
    layers (its KV cache cannot drop scattered tree rows) gets a clear refusal, not wrong tokens."""
    from transformers import AutoModelForCausalLM

    from draftsmith.draft.model import Eagle3Draft
    from draftsmith.errors import DraftsmithError
    from draftsmith.eval.spec_decode import SpecConfig, greedy_generate, speculative_generate

    family: Family = family_run["family"]
    model = AutoModelForCausalLM.from_pretrained(family_run["target"], dtype=torch.float32).eval()
    draft = Eagle3Draft.from_pretrained(family_run["served"], embed_weight=model.get_input_embeddings().weight,
                                        dtype=torch.float32).eval()
    prompt = list(range(100, 140))            # longer than the 24-token windows
    cfg = SpecConfig(num_steps=3, topk=2, max_new_tokens=16)
    if family.settings.get("sliding_window"):
        with pytest.raises(DraftsmithError, match=r"tree drafting \(--topk > 1\) needs full-attention"):
            speculative_generate(model, draft, prompt, cfg, draft.config.aux_layer_ids)
        chain = speculative_generate(model, draft, prompt, SpecConfig(num_steps=3, max_new_tokens=16),
                                     draft.config.aux_layer_ids)
        assert chain.tokens == greedy_generate(model, prompt, 16, ()).tokens
        return
    g = speculative_generate(model, draft, prompt, cfg, draft.config.aux_layer_ids)
    assert g.tokens == greedy_generate(model, prompt, 16, ()).tokens
