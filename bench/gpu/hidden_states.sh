#!/usr/bin/env bash
# hidden-states on a lent GPU (H100/H200): a random-initialized Llama-3-8B-shaped target in
# bf16, 64 samples of 2048 tokens, batch 4. Reports tokens/s of the stage and its overhead
# over bare forwards of the same batches (bracketed: bare, stage, bare), and the card.
#
#   bash bench/gpu/hidden_states.sh            # GPU, Llama-3-8B shape
#   bash bench/gpu/hidden_states.sh --tiny     # CPU dry run: same script, tiny shape, 8 samples
#
# Writes bench/results/hidden_states_gpu.json, or $HS_OUTPUT when set (the --tiny dry run writes only there).
# bench/gpu/run_all.sh runs it as part (a).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
test -x "$PY" || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SHAPE=8b
if [[ "${1:-}" == "--tiny" ]]; then SHAPE=tiny; fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench_hs_gpu.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

SHAPE="$SHAPE" WORK="$WORK" "$PY" - <<'PYEOF'
import json, os, platform, sys, time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, "bench")
from hidden_states import bare_forwards  # noqa: E402  (bench/hidden_states.py)
from draftsmith.features.generate import HiddenStatesConfig, run_hidden_states  # noqa: E402
from draftsmith.fsutil import write_json_atomic  # noqa: E402

shape, work = os.environ["SHAPE"], Path(os.environ["WORK"])
tiny = shape == "tiny"
device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
if shape == "8b":
    geometry = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192)
    samples, length, dtype = 64, 2048, torch.bfloat16
else:
    geometry = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=1024, max_position_embeddings=4096)
    samples, length, dtype = 8, 256, torch.float32

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from datasets import Dataset  # noqa: E402

torch.manual_seed(0)
t0 = time.perf_counter()
torch.set_default_dtype(dtype)  # build the weights in their final dtype: no fp32 copy of 8B parameters
with torch.device(device):
    model = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, **geometry))
torch.set_default_dtype(torch.float32)
model.save_pretrained(work / "model")
del model
if device == "cuda":
    torch.cuda.empty_cache()
print(f"random {shape} model saved in {time.perf_counter() - t0:.0f}s", file=sys.stderr)

g = torch.Generator().manual_seed(0)
ids = torch.randint(0, geometry["vocab_size"], (samples, length), generator=g)
mask = torch.zeros(samples, length, dtype=torch.long)
mask[:, length // 4:] = 1
Dataset.from_dict({"id": [f"s{i}" for i in range(samples)], "input_ids": ids.tolist(),
                   "loss_mask": mask.tolist()}).save_to_disk(str(work / "data"))

cfg = HiddenStatesConfig(target_model_path=str(work / "model"), data_path=str(work / "data"),
                         output_dir=str(work / "store"), max_length=length, batch_size=4,
                         dtype=str(dtype).replace("torch.", ""), device=device, progress=False, force=True)
bare_before, tokens, _ = bare_forwards(work / "model", work / "data", cfg)
summary = run_hidden_states(cfg)
bare_after, _, _ = bare_forwards(work / "model", work / "data", cfg)
bare = (bare_before + bare_after) / 2
report = {
    "benchmark": f"hidden-states on a random {shape} Llama, {samples} x {length} tokens, batch 4, {dtype}",
    "command": "bash bench/gpu/hidden_states.sh" + (" --tiny" if tiny else ""),
    "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "device": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.machine()}, {os.cpu_count()} cores)",
    "codec": cfg.codec, "tokens": tokens,
    "bare_forward_s_before": round(bare_before, 2), "bare_forward_s_after": round(bare_after, 2),
    "stage_loop_s": round(summary["loop_s"], 2),
    "stage_tokens_per_s": round(summary["tokens_per_s"], 1), "bare_tokens_per_s": round(tokens / bare, 1),
    "overhead_ratio": round(summary["loop_s"] / bare, 3),
    "store_bytes_per_token": round(summary["bytes_per_token"], 1),
    "specforge_bytes_per_token": summary["specforge_bytes_per_token"],
}
output = os.environ.get("HS_OUTPUT") or (None if tiny else "bench/results/hidden_states_gpu.json")
if output:  # the dry run checks the script: its figures mean nothing, so it writes only where asked
    write_json_atomic(Path(output), report)
print(json.dumps(report, indent=2))
PYEOF
