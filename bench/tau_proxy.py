"""A fast proxy for the demo's τ: teacher-forced TTT accuracy on the target's own MT-bench replies.

    python bench/tau_proxy.py DRAFT_DIR [DRAFT_DIR ...] [--questions 10] [--max-new-tokens 128]
        [--name tau_proxy]

Real speculative decoding (bench/eval.py, the demo's eval stage) decodes every turn twice
and takes minutes per draft on a CPU. This script decodes the first turn of each MT-bench
question greedily once (cached in cache/bench/), computes the target's features of
prompt + reply, and runs each draft's training-time-test forward over the reply: the
per-step accuracy against the target's own next tokens, and the τ it implies
(1 + Σ_k Π_{i≤k} acc_i), in seconds per draft. On the demo's default draft it gave τ 1.338
where real decoding of the same 10 questions (both turns) gave 1.34 (docs/benchmarks.md §6):
use it to compare training recipes, and confirm the winner with the real thing.
Writes bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def reply_batches(model, tokenizer, aux_layers: list[int], questions: int, max_new_tokens: int,
                  cache: Path) -> list[dict]:
    """input_ids / loss_mask (reply tokens) / features of each question's greedy first-turn reply (cached)."""
    from draftsmith.eval import benchmarks
    from draftsmith.target.hf import HFTarget
    from draftsmith.target.prompting import encode_prompt, eos_ids, render_prompt

    if cache.exists():
        return torch.load(cache)
    target = HFTarget(model, aux_layers)
    eos = list(eos_ids(tokenizer, model))
    batches = []
    for prompt in benchmarks.mtbench(questions):
        ids = encode_prompt(tokenizer, render_prompt(tokenizer, [{"role": "user", "content": prompt.turns[0]}]))
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=eos[0])[0].tolist()
        x = torch.tensor([out])
        mask = torch.tensor([[0] * len(ids) + [1] * (len(out) - len(ids))])
        batches.append({"input_ids": x, "loss_mask": mask, "attention_mask": torch.ones_like(x),
                        **target.features(x)})
    target.close()
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(batches, cache)
    return batches


def score(model, tokenizer, draft_dir: Path, target_path, questions: int, max_new_tokens: int,
          length: int) -> tuple[dict, int]:
    """(train/ttt.py `step_metrics` of the draft's K = `length` unroll over the target's own MT-bench
    replies, supervised rows at step 0): served tau (full-vocab argmax) and tau within the draft vocab."""
    from draftsmith import resources
    from draftsmith.draft.model import Eagle3Draft
    from draftsmith.train.ttt import step_metrics, ttt_forward

    draft = Eagle3Draft.from_pretrained(draft_dir, dtype=torch.float32).eval()
    draft.load_embeddings(model.get_input_embeddings().weight)
    layers = list(draft.config.aux_layer_ids)
    cache = resources.cache_root() / "bench" / (f"tau_proxy_{Path(target_path).name}_q{questions}_"
                                                 f"n{max_new_tokens}_l{'-'.join(map(str, layers))}.pt")
    batches = reply_batches(model, tokenizer, layers, questions, max_new_tokens, cache)
    head = model.lm_head.weight.index_select(0, draft.draft_to_target)
    loss = [0.0] * length
    correct = [0] * length            # served: the target's full-vocab argmax (train/ttt.py)
    correct_dv = [0] * length         # within the draft vocab
    count = [0] * length
    run_sum = 0                       # Σ over step-0 rows of the served chain's accepted length
    for batch in batches:
        with torch.no_grad():
            r = ttt_forward(draft, batch, length=length, target_head=head, full_head=model.lm_head.weight,
                            return_chains=True)
        loss = [a + b for a, b in zip(loss, r.loss_sum)]
        correct = [a + b for a, b in zip(correct, r.correct_served)]
        correct_dv = [a + b for a, b in zip(correct_dv, r.correct_draft_vocab)]
        count = [a + b for a, b in zip(count, r.count)]
        run_sum += int(r.served_chain.long().cumprod(-1).sum())   # rows not supervised at step 0 add 0
    metrics = step_metrics(loss, correct_dv, count, correct)
    # The replies are the target's own greedy text, so the token fed at step k is the one a server feeds
    # once steps < k are accepted: a row's run of served-right steps is the length a verify step
    # starting there accepts. tau_chain keeps the correlation between steps that tau's product of
    # per-step accuracies drops.
    metrics["tau_chain"] = 1.0 + run_sum / max(1, count[0])
    return metrics, count[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("drafts", type=Path, nargs="+", help="exported draft folders (same target and aux layers)")
    p.add_argument("--target-model-path", type=Path, default=None, help="default: the packaged SmolLM2")
    p.add_argument("--questions", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--ttt-length", type=int, default=5, help="draft steps scored (K)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="tau_proxy")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from draftsmith import resources

    target_path = args.target_model_path or resources.smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(target_path)
    model = AutoModelForCausalLM.from_pretrained(target_path, dtype=torch.float32).eval()
    results = []
    for folder in args.drafts:
        s, tokens = score(model, tokenizer, folder, target_path, args.questions, args.max_new_tokens, args.ttt_length)
        row = {"draft": str(folder), "acc_k": [round(a, 4) for a in s["acc_k"]], "tau": round(s["tau"], 4),
               "tau_chain": round(s["tau_chain"], 4),
               "tau_draft_vocab": round(s["tau_draft_vocab"], 4), "tokens": tokens}
        print(f"{folder}: tau~{row['tau']:.3f} chain {row['tau_chain']:.3f}  acc by step {' '.join(f'{a:.3f}' for a in row['acc_k'])}",
              flush=True)
        results.append(row)
    out = ROOT / "bench" / "results" / f"{args.name}.json"
    out.write_text(json.dumps({"command": "python bench/tau_proxy.py " + " ".join(argv or sys.argv[1:]),
                               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                               "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
                               "questions": args.questions, "max_new_tokens": args.max_new_tokens,
                               "results": results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
