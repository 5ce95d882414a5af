"""eval: speculative decoding is lossless, counts acceptance right, and reaches τ ≈ K+1 with a
draft that knows the target's next token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _export_helpers import make_checkpoint
from draftsmith import cli
from draftsmith.draft.config import Eagle3Config
from draftsmith.draft.model import Eagle3Draft
from draftsmith.eval import benchmarks
from draftsmith.eval.report import BenchmarkResult, TurnResult, benchmark_summary
from draftsmith.eval.spec_decode import Generation, SpecConfig, greedy_generate, speculative_generate
from draftsmith.export import ExportConfig, export_checkpoint

VOCAB = 256
AUX = [1, 2, 3]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: two threads only spin against each other on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def markov_target():
    """A tiny Llama whose next token depends only on the current one: every layer's o_proj and
    down_proj are zero, so the residual stream stays the token embedding. Its greedy output is a
    walk of `succ`, which a draft can learn exactly; the aux features are still real per-layer
    hidden states."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.data.zero_()
        layer.mlp.down_proj.weight.data.zero_()
    with torch.no_grad():
        succ = model(torch.arange(VOCAB)[:, None]).logits[:, -1].argmax(-1)
    return model, succ


@pytest.fixture(scope="module")
def copying_draft(markov_target):
    """A draft trained (Adam, 300 steps on random token sequences) to predict the target's next
    token with the EAGLE-3 alignment: at position t it reads token t+1 and the target feature of t
    and must output succ(token t+1). Half the hidden inputs are noise and a second unrolled pass
    feeds its own output hidden, so it predicts from its own hidden at deeper draft steps too.
    What this proves: the decoding loop's alignment, verification, acceptance counting and cache
    rollback accept a draft that is right up to K times per step; a draft fed token t instead of
    t+1 would predict the token already there and be rejected."""
    model, succ = markov_target
    torch.manual_seed(0)
    cfg = Eagle3Config.from_target_config(model.config, aux_layer_ids=AUX)
    draft = Eagle3Draft(cfg)
    draft.load_embeddings(model.get_input_embeddings().weight)
    with torch.no_grad():
        hs = model(torch.arange(VOCAB)[:, None], output_hidden_states=True).hidden_states
    feature_of = torch.cat([hs[i][:, 0] for i in AUX], dim=-1)     # position-independent in this target
    opt = torch.optim.Adam([p for p in draft.parameters() if p.requires_grad], lr=1e-2)
    batch, length = 32, 8
    positions = torch.arange(length)[None].expand(batch, -1)
    for _ in range(300):
        seqs = torch.randint(0, VOCAB, (batch, length + 1))
        ids, labels = seqs[:, 1:], succ[seqs[:, 1:]]
        hidden = draft.project(feature_of[seqs[:, :-1]])
        noise = torch.randn_like(hidden) * hidden.detach().pow(2).mean().sqrt() * 4
        hidden = torch.where(torch.rand(batch, length, 1) < 0.5, noise, hidden)
        loss = 0.0
        for depth in range(2):      # depth 1: the output hidden of position t-1 comes back at t
            out, _ = draft.layer(ids[:, depth:], hidden, positions[:, depth:])
            loss = loss + torch.nn.functional.cross_entropy(draft.logits(out).flatten(0, 1),
                                                            labels[:, depth:].flatten())
            hidden = out[:, :-1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1
    return draft.eval()


@pytest.fixture(scope="module")
def random_draft(markov_target):
    """An untrained draft with a reduced, non-identity vocabulary (every other target id)."""
    model, _ = markov_target
    torch.manual_seed(1)
    cfg = Eagle3Config.from_target_config(model.config, draft_vocab_size=VOCAB // 2, aux_layer_ids=AUX)
    draft = Eagle3Draft(cfg)
    ids = torch.arange(VOCAB // 2) * 2
    t2d = torch.zeros(VOCAB, dtype=torch.bool)
    t2d[ids] = True
    draft.set_vocab_mapping(ids - torch.arange(VOCAB // 2), t2d)
    draft.load_embeddings(model.get_input_embeddings().weight)
    return draft.eval()


def _tau(g: Generation) -> float:
    return sum(g.emitted) / len(g.emitted)


PROMPT = [5, 17, 99, 3, 42, 250, 8, 64, 1, 77]


@pytest.mark.parametrize("num_steps,topk", [(4, 1), (6, 1), (3, 2), (4, 3)])
def test_copying_draft_reaches_k_plus_one(markov_target, copying_draft, num_steps, topk):
    model, succ = markov_target
    max_new = 1 + 8 * (num_steps + 1)                  # the prefill token + 8 full verify steps
    ref = greedy_generate(model, PROMPT, max_new, ())
    expected = [int(succ[PROMPT[-1]])]
    while len(expected) < max_new:
        expected.append(int(succ[expected[-1]]))
    assert ref.tokens == expected                      # the target really is the succ walk
    g = speculative_generate(model, copying_draft, PROMPT, SpecConfig(num_steps=num_steps, topk=topk,
                                                                      max_new_tokens=max_new), AUX)
    assert g.tokens == ref.tokens
    assert _tau(g) >= 0.85 * (num_steps + 1)
    assert sum(g.accepted) >= 0.85 * num_steps * len(g.accepted)


@pytest.mark.parametrize("num_steps,topk", [(0, 1), (1, 1), (3, 1), (5, 1), (2, 3), (4, 2)])
def test_random_draft_is_lossless(markov_target, random_draft, num_steps, topk):
    model, _ = markov_target
    ref = greedy_generate(model, PROMPT, 30, ())
    g = speculative_generate(model, random_draft, PROMPT, SpecConfig(num_steps=num_steps, topk=topk,
                                                                     max_new_tokens=30), AUX)
    assert g.tokens == ref.tokens
    assert _tau(g) >= 1.0
    assert sum(g.emitted) + 1 == len(g.tokens) == 30      # the prefill token + one count per verify step
    assert all(0 <= a <= num_steps for a in g.accepted)


@pytest.mark.parametrize("topk", [1, 3])
def test_qwen2_target_is_lossless(tiny_qwen2_dir, tmp_path, topk):
    """Another architecture through the exported-folder path (Qwen2: q/k/v biases, its own rope theta)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir).eval()
    folder = tmp_path / "served"
    export_checkpoint(ExportConfig(checkpoint=make_checkpoint(tiny_qwen2_dir, tmp_path / "ckpt"), output_dir=folder,
                                   target_model_path=tiny_qwen2_dir))
    draft = Eagle3Draft.from_pretrained(folder, embed_weight=model.get_input_embeddings().weight).eval()
    assert draft.config.rope_theta == 1000000.0
    ref = greedy_generate(model, PROMPT, 20, ())
    g = speculative_generate(model, draft, PROMPT, SpecConfig(num_steps=3, topk=topk, max_new_tokens=20), AUX)
    assert g.tokens == ref.tokens and sum(g.emitted) + 1 == 20


def test_k_zero_gives_tau_exactly_one(markov_target, copying_draft):
    model, _ = markov_target
    g = speculative_generate(model, copying_draft, PROMPT, SpecConfig(num_steps=0, max_new_tokens=20), AUX)
    assert g.emitted == [1] * 19 and _tau(g) == 1.0 and g.accepted == [0] * 19


def test_eos_and_budget_truncate_like_greedy(markov_target, copying_draft):
    model, succ = markov_target
    ref = greedy_generate(model, PROMPT, 40, ())
    eos = ref.tokens[9]                                 # stop at the 10th generated token (first occurrence)
    stop = ref.tokens.index(eos) + 1
    ref_eos = greedy_generate(model, PROMPT, 40, (eos,))
    assert len(ref_eos.tokens) == stop
    g = speculative_generate(model, copying_draft, PROMPT, SpecConfig(num_steps=4, max_new_tokens=40,
                                                                      eos_token_ids=(eos,)), AUX)
    assert g.tokens == ref_eos.tokens
    g = speculative_generate(model, copying_draft, PROMPT, SpecConfig(num_steps=4, max_new_tokens=7), AUX)
    assert g.tokens == ref.tokens[:7] and g.emitted == [5, 1]


def test_eval_features_match_the_hidden_states_backend(markov_target, tmp_path):
    """The eval's aux features (output_hidden_states at the draft's ids) are what training saw (the
    hidden-states engineer's hooked capture)."""
    from draftsmith.eval.spec_decode import _Target
    from draftsmith.target.hf import HFTarget

    model, _ = markov_target
    ids = torch.tensor(PROMPT)
    _, aux = _Target(model, AUX).forward(ids, torch.arange(len(PROMPT)), None, want_aux=True)
    backend = HFTarget(model, aux_layers=AUX)
    try:
        expected = backend.features(ids[None])["aux_hidden_states"][0]
    finally:
        backend.close()
    torch.testing.assert_close(aux, expected)


def test_summary_counts_add_up():
    turns = [TurnResult("a", 0, 5, Generation(tokens=list(range(9)), seconds=1.0, emitted=[3, 4, 1],
                                              accepted=[2, 3, 0]), Generation(tokens=list(range(9)), seconds=2.0)),
             TurnResult("b", 0, 5, Generation(tokens=[1, 2, 3], seconds=1.0, emitted=[2], accepted=[3]),
                        Generation(tokens=[1, 2, 4], seconds=1.0))]
    s = benchmark_summary(BenchmarkResult("x", 3, 1, 4, turns))
    assert s["verify_steps"] == 4 and s["generated_tokens"] == 12
    assert s["tau"] == (3 + 4 + 1 + 2) / 4 and s["tau_sglang"] == 12 / 4
    assert s["accept_rate"] == [3 / 4, 3 / 4, 2 / 4]
    assert s["accept_rate_conditional"] == [3 / 4, 1.0, 2 / 3]
    assert s["speedup"] == pytest.approx((12 / 2.0) / (12 / 3.0))
    assert s["lossless"] is False and s["mismatches"] == [{"id": "b", "turn": 0, "first_mismatch": 2}]


def test_benchmark_loaders(tmp_path):
    mt = benchmarks.load("mtbench", 3)
    assert len(mt) == 3 and all(len(p.turns) == 2 for p in mt) and mt[0].id == "mtbench/81"
    gsm = benchmarks.load("gsm8k", 2)
    assert [p.id for p in gsm] == ["gsm8k/0", "gsm8k/1"] and gsm[0].turns[0].startswith("Janet")
    he = benchmarks.load("humaneval", 2)
    assert he[1].id == "HumanEval/1" and "def " in he[1].turns[0]
    assert len(benchmarks.load("mtbench")) == 80
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join([json.dumps({"id": "x", "turns": ["a", "b"]}), json.dumps({"prompt": "c"}), "",
                            json.dumps({"id": "y", "conversations": [{"role": "system", "content": "s"},
                                                                     {"role": "user", "content": "d"},
                                                                     {"role": "assistant", "content": "e"}]})]))
    got = benchmarks.load(str(f))
    assert [(p.id, p.turns, p.system) for p in got] == [("x", ["a", "b"], None), ("p/2", ["c"], None),
                                                         ("y", ["d"], "s")]
    f.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"answer": 1}) + "\n")
    with pytest.raises(Exception, match=r"p.jsonl, line 2"):
        benchmarks.load(str(f))
    with pytest.raises(Exception, match="unknown benchmark"):
        benchmarks.load("squad")


@pytest.fixture(scope="module")
def served_draft(tiny_llama_dir, tmp_path_factory) -> Path:
    ckpt = make_checkpoint(tiny_llama_dir, tmp_path_factory.mktemp("ckpt"))
    out = tmp_path_factory.mktemp("served")
    export_checkpoint(ExportConfig(checkpoint=ckpt, output_dir=out, target_model_path=tiny_llama_dir))
    return out


def test_eval_cli_end_to_end(tiny_llama_dir, served_draft, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p1", "prompt": "What is the capital of France?"}) + "\n"
                       + json.dumps({"id": "p2", "turns": ["Hi", "Tell me more"]}) + "\n")
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps({"step": s, "loss": 5.0 / s, "acc_0": s / 10}) for s in range(1, 6)))
    out = tmp_path / "report.json"
    code = cli.run_command("eval", ["--target-model-path", str(tiny_llama_dir), "--draft-model-path",
                                    str(served_draft), "--benchmark", str(prompts), "--draft-depth", "0", "3",
                                    "--topk", "2", "--max-new-tokens", "6", "--output-file", str(out),
                                    "--metrics", str(metrics)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["lossless"] is True
    k0, k3 = report["benchmarks"]
    assert (k0["num_steps"], k3["num_steps"]) == (0, 3) and k3["topk"] == 2 and k3["num_draft_tokens"] == 7
    for s in (k0, k3):
        assert s["prompts"] == 2 and s["turns"] == 3 and s["lossless"] is True and s["tau"] >= 1.0
        assert s["speedup"] > 0 and len(s["accept_rate"]) == s["num_steps"]
    assert k0["tau"] == 1.0
    assert "| " + str(prompts) in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_cli_fails_on_a_lossless_mismatch(tiny_llama_dir, served_draft, tmp_path, monkeypatch, capsys):
    import draftsmith.eval.cli as eval_cli

    real = eval_cli.greedy_generate

    def wrong_reference(model, ids, max_new_tokens, eos):
        g = real(model, ids, max_new_tokens, eos)
        if len(ids) > 10:                    # leave the warm-up alone
            g.tokens[-1] = (g.tokens[-1] + 1) % 1000
        return g

    monkeypatch.setattr(eval_cli, "greedy_generate", wrong_reference)
    out = tmp_path / "report.json"
    code = cli.run_command("eval", ["--target-model-path", str(tiny_llama_dir), "--draft-model-path",
                                    str(served_draft), "--benchmark", "mtbench", "--num-questions", "1", "--draft-depth", "2",
                                    "--max-new-tokens", "4", "--output-file", str(out)])
    assert code == 1
    report = json.loads(out.read_text())
    assert report["lossless"] is False and report["benchmarks"][0]["turns"] == 2   # both MT-bench turns
    assert "speculative output differs" in capsys.readouterr().err


def test_eval_refuses_an_invalid_draft(tiny_llama_dir, served_draft, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(served_draft, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = cfg["eagle_aux_hidden_state_layer_ids"]
    (bad / "config.json").write_text(json.dumps(cfg))
    code = cli.run_command("eval", ["--target-model-path", str(tiny_llama_dir), "--draft-model-path", str(bad),
                                    "--benchmark", "gsm8k", "--num-questions", "1", "--output-file", str(tmp_path / "r.json")])
    assert code == 2 and "SGLang ids" in capsys.readouterr().err


def test_sglang_client_reads_acceptance_from_meta_info(tiny_llama_dir, tmp_path):
    """Against a stand-in for SGLang's /generate (the real server cannot run here): the request
    carries the chat-templated prompt, greedy, and τ comes from completion_tokens / spec_verify_ct."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            reply = {"text": "ok", "meta_info": {"completion_tokens": 9, "spec_verify_ct": 4}}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "served.json"
        code = cli.run_command("eval", ["--backend", "sglang", "--server-url", f"http://127.0.0.1:{server.server_port}",
                                        "--target-model-path", str(tiny_llama_dir), "--benchmark", "mtbench",
                                        "--num-questions", "1", "--max-new-tokens", "16", "--output-file", str(out)])
    finally:
        server.shutdown()
    assert code == 0
    (s,) = json.loads(out.read_text())["benchmarks"]
    assert s["requests"] == 2 and s["tau_sglang"] == 18 / 8 and s["tau"] == 16 / 8
    path, body = seen[1]
    assert path == "/generate" and body["sampling_params"] == {"temperature": 0.0, "max_new_tokens": 16}
    assert body["text"].count("<|im_start|>user") == 2 and "ok<|im_end|>" in body["text"]   # turn 2 after answer 1
