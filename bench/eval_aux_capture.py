"""Does reading eval's aux features by hooks (target/hf.py `AuxCapture`) slow speculative decoding?

    OMP_NUM_THREADS=1 .venv/bin/python bench/eval_aux_capture.py [--draft-model-path cache/demo/default/draft]
        [--questions 2] [--max-new-tokens 48] [--draft-depth 5]

1. Decodes the first MT-bench questions (both turns) speculatively twice per turn in one process:
with eval's capture (`AuxCapture`: forward pre-hooks on the aux layers, the one owner of aux
capture) and with the capture eval used before it (`output_hidden_states=True`, every hidden
state collected, kept here as the reference), alternating which goes first, so machine load
hits both alike. Checks both emit the same tokens; reports the median over turns of the
per-turn time ratio (reference / hooks: > 1 means hooks are faster) and each one's tokens/s.
2. The cost at its source: `--forwards` pairs of one verify forward (K + 1 tokens over a cached
prompt of `--context` tokens, the cache cropped back after each), one with the hooks and one with
`output_hidden_states`, alternating; the median of the per-pair time ratio.
Writes bench/results/eval_aux_capture.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from draftsmith import resources  # noqa: E402
from draftsmith.eval import benchmarks as bench  # noqa: E402
from draftsmith.eval import spec_decode  # noqa: E402
from draftsmith.eval.spec_decode import SpecConfig, _tree_mask, _with_cache, speculative_generate  # noqa: E402
from draftsmith.fsutil import write_json_atomic  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "eval_aux_capture.json"


class _OutputHiddenStatesTarget(spec_decode._Target):
    """eval's target before AuxCapture: every hidden state collected by output_hidden_states."""

    def __init__(self, model, aux_layers):
        super().__init__(model, aux_layers)
        self.aux.close()
        self.aux_layers = list(aux_layers)

    def forward(self, ids, positions, allow, want_aux, last_logits_only=False):
        mask = None if allow is None else _tree_mask(allow.to(self.device), self.dtype)
        out = self.model(input_ids=ids[None].to(self.device), position_ids=positions[None].to(self.device),
                         attention_mask=mask, **_with_cache(self.model, self.cache), use_cache=True,
                         output_hidden_states=want_aux, logits_to_keep=1 if last_logits_only else 0)
        aux = torch.cat([out.hidden_states[i][0] for i in self.aux_layers], dim=-1) if want_aux else None
        return out.logits[0].float(), aux


def decode(kind: str, model, draft, ids, cfg, aux_layers):
    hooks = spec_decode._Target
    if kind == "output_hidden_states":
        spec_decode._Target = _OutputHiddenStatesTarget
    try:
        return speculative_generate(model, draft, ids, cfg, aux_layers)
    finally:
        spec_decode._Target = hooks


@torch.inference_mode()
def verify_forwards(model, aux_layers, pairs: int, context: int, tokens: int) -> list[float]:
    """Per pair: seconds of a `tokens`-token forward over `context` cached tokens with output_hidden_states,
    over the same forward with AuxCapture's hooks (alternating which runs first)."""
    import time

    from transformers import DynamicCache

    from draftsmith.target.hf import AuxCapture

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (1, context + tokens), generator=gen)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids[:, :context], **_with_cache(model, cache), use_cache=True, logits_to_keep=1)
    chunk, pos = ids[:, context:], torch.arange(context, context + tokens)[None]

    def run(kind: str) -> float:
        capture = AuxCapture.for_model(model, aux_layers) if kind == "hooks" else None
        start = time.perf_counter()
        out = model(input_ids=chunk, position_ids=pos, **_with_cache(model, cache), use_cache=True,
                    output_hidden_states=kind != "hooks")
        aux = capture.take() if capture else torch.cat([out.hidden_states[i] for i in aux_layers], dim=-1)
        seconds = time.perf_counter() - start
        if capture:
            capture.close()
        cache.crop(-tokens)                      # back to the cached prompt
        assert aux.shape[1] == tokens
        return seconds

    ratios = []
    for i in range(pairs):
        order = ("hooks", "output_hidden_states") if i % 2 == 0 else ("output_hidden_states", "hooks")
        seconds = {kind: run(kind) for kind in order}
        ratios.append(seconds["output_hidden_states"] / seconds["hooks"])
    return ratios


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target-model-path", default=None, help="default: the packaged SmolLM2-135M-Instruct")
    p.add_argument("--draft-model-path", default=str(ROOT / "cache" / "demo" / "default" / "draft"))
    p.add_argument("--questions", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--draft-depth", type=int, default=5)
    p.add_argument("--forwards", type=int, default=60, help="verify-forward pairs of part 2")
    p.add_argument("--context", type=int, default=256, help="cached tokens before each verify forward")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from draftsmith.draft.model import Eagle3Draft
    from draftsmith.target.prompting import encode_prompt, eos_ids, render_prompt

    target = args.target_model_path or str(resources.smollm2_dir())
    tokenizer = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    draft = Eagle3Draft.from_pretrained(args.draft_model_path, dtype=torch.float32).eval()
    draft.load_embeddings(model.get_input_embeddings().weight)
    aux_layers = list(draft.config.aux_layer_ids)
    cfg = SpecConfig(num_steps=args.draft_depth, max_new_tokens=args.max_new_tokens, eos_token_ids=eos_ids(tokenizer, model))
    load_before = os.getloadavg()
    warm = encode_prompt(tokenizer, render_prompt(tokenizer, [{"role": "user", "content": "Hello"}]))
    for kind in ("hooks", "output_hidden_states"):
        decode(kind, model, draft, warm, SpecConfig(num_steps=2, max_new_tokens=4), aux_layers)
    turns = []
    for q, prompt in enumerate(bench.load("mtbench", args.questions)):
        messages = []
        for t, text in enumerate(prompt.turns):
            messages.append({"role": "user", "content": text})
            ids = encode_prompt(tokenizer, render_prompt(tokenizer, messages))
            order = ("hooks", "output_hidden_states") if (q + t) % 2 == 0 else ("output_hidden_states", "hooks")
            gens = {kind: decode(kind, model, draft, ids, cfg, aux_layers) for kind in order}
            same = gens["hooks"].tokens == gens["output_hidden_states"].tokens
            row = {"prompt": prompt.id, "turn": t, "tokens": len(gens["hooks"].tokens), "same_tokens": same,
                   **{f"{k}_s": g.seconds for k, g in gens.items()},
                   "ratio": gens["output_hidden_states"].seconds / gens["hooks"].seconds}
            print(json.dumps(row), flush=True)
            turns.append(row)
            messages.append({"role": "assistant",
                             "content": tokenizer.decode(gens["hooks"].tokens, skip_special_tokens=True)})
    forwards = verify_forwards(model, aux_layers, args.forwards, args.context, args.draft_depth + 1)
    result = {
        "what": "eval speculative decoding: aux features by AuxCapture hooks vs output_hidden_states, same process",
        "command": "python bench/eval_aux_capture.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "target": Path(target).name, "draft": args.draft_model_path, "draft_depth": args.draft_depth,
        "turns": turns,
        "verify_forward": {"pairs": args.forwards, "context": args.context, "tokens": args.draft_depth + 1,
                           "median_ratio_output_hidden_states_over_hooks": statistics.median(forwards),
                           "ratios": forwards},
        "all_same_tokens": all(r["same_tokens"] for r in turns),
        "median_ratio_output_hidden_states_over_hooks": statistics.median(r["ratio"] for r in turns),
        "tokens_per_s_hooks": sum(r["tokens"] for r in turns) / sum(r["hooks_s"] for r in turns),
        "tokens_per_s_output_hidden_states": sum(r["tokens"] for r in turns)
        / sum(r["output_hidden_states_s"] for r in turns),
    }
    write_json_atomic(args.output, result)
    print(json.dumps({k: v for k, v in result.items() if k != "turns"}, indent=2))
    print("verify forward: median ratio", result["verify_forward"]["median_ratio_output_hidden_states_over_hooks"])
    return 0 if result["all_same_tokens"] else 1


if __name__ == "__main__":
    sys.exit(main())
