"""Benchmark the `hf` chat-template path: transformers' public render function vs its private compiled template.

    .venv/bin/python bench/chat_template_render.py [--conversations 300] [--repeats 5] [--build-rows 1000]

`draftsmith.data.templates.jinja.render_chat_template` calls transformers' public
`render_jinja_template`, which converts every message to plain data on each call. The
alternative is to render transformers' compiled sandbox template directly (the private
`_compile_jinja_template`). This measures what the public function costs, twice:
`JinjaTemplate.render` (text + reply spans, as build-dataset calls it) on the first N packaged
ShareGPT conversations with the SmolLM2 (ChatML) and Qwen3 (thinking switch: 3 prompt renders
per reply) tokenizers, and the whole build-dataset stage (SmolLM2, `hf`, one process) on the
first `--build-rows` of them; the two paths alternate in one process, after a check that they
render identical text and spans. Writes bench/results/chat_template_render.json: medians per
path, their ratios, and the load average around the runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

from draftsmith import resources
from draftsmith.data.conversation import drop_leading_replies, normalize_row
from draftsmith.data.formats import iter_records
from draftsmith.data.templates import JinjaTemplate, jinja
from draftsmith.fsutil import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "chat_template_render.json"
TOKENIZERS = {"smollm2": resources.smollm2_dir, "qwen3": lambda: resources.tokenizer_dir("qwen3")}


def conversations(n: int) -> list[list[dict]]:
    out = []
    for rec in iter_records(resources.sharegpt_json()):
        norm = None if rec.error else normalize_row(rec.value)
        if norm is not None and norm.kind == "conversation" and norm.row is not None:
            out.append(drop_leading_replies(norm.row["conversations"])[0])
            if len(out) == n:
                break
    return out


def private_render(source, messages, *, add_generation_prompt=False, tools=None, generation_spans=False,
                   **variables):
    """render_chat_template through transformers' private compiled template (plain renders only)."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    assert not generation_spans
    return _compile_jinja_template(source).render(messages=jinja._aliased(messages), tools=tools or None,
                                                  documents=None, add_generation_prompt=add_generation_prompt,
                                                  **variables), []


def path(label: str):
    return mock.patch.object(jinja, "render_chat_template", private_render) if label == "private" \
        else contextlib.nullcontext()


def render_all(template: JinjaTemplate, convs: list[list[dict]], label: str):
    with path(label):
        start = time.perf_counter()
        rendered = [template.render(c) for c in convs]
        return time.perf_counter() - start, rendered


def build_all(data: Path, out: Path, label: str) -> tuple[float, float]:
    from draftsmith.data.build import BuildConfig, build_dataset

    with path(label):
        wall, cpu = time.perf_counter(), time.process_time()
        build_dataset(BuildConfig(data_path=str(data), target_model_path=str(resources.smollm2_dir()),
                                  output_dir=str(out), overwrite=True))
        return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--build-rows", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    convs = conversations(max(args.conversations, args.build_rows))
    load_before = os.getloadavg()
    runs = {}
    for name, tokenizer_path in TOKENIZERS.items():
        template = JinjaTemplate(AutoTokenizer.from_pretrained(str(tokenizer_path())))
        times: dict[str, list[float]] = {"public": [], "private": []}
        for _ in range(args.repeats):
            for label in times:                           # alternating, so machine load hits both alike
                seconds, rendered = render_all(template, convs[:args.conversations], label)
                times[label].append(seconds)
                if label == "public":
                    reference = rendered
                else:
                    assert rendered == reference, "the two paths render differently"
        med = {k: statistics.median(v) for k, v in times.items()}
        runs[f"render_{name}"] = {"seconds_median": {k: round(v, 4) for k, v in med.items()},
                                  "seconds_all": {k: [round(x, 4) for x in v] for k, v in times.items()},
                                  "public_over_private": round(med["public"] / med["private"], 3)}
        print(f"render {name}", runs[f"render_{name}"]["seconds_median"], "public/private",
              runs[f"render_{name}"]["public_over_private"])
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "conversations.jsonl"
        data.write_text("".join(json.dumps({"id": str(i), "conversations": c}) + "\n"
                                for i, c in enumerate(convs[:args.build_rows])), encoding="utf-8")
        build: dict[str, list[tuple[float, float]]] = {"public": [], "private": []}
        for _ in range(args.repeats):
            for label in build:
                build[label].append(build_all(data, Path(tmp) / label, label))
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in build.items()}
    runs["build_dataset_smollm2"] = {
        "rows": args.build_rows, "wall_s_median": {k: round(v[0], 3) for k, v in med.items()},
        "cpu_s_median": {k: round(v[1], 3) for k, v in med.items()},
        "all": {k: [[round(w, 3), round(c, 3)] for w, c in v] for k, v in build.items()},
        "public_over_private_wall": round(med["public"][0] / med["private"][0], 3),
        "public_over_private_cpu": round(med["public"][1] / med["private"][1], 3)}
    print("build-dataset", runs["build_dataset_smollm2"]["wall_s_median"], "public/private wall",
          runs["build_dataset_smollm2"]["public_over_private_wall"], "cpu",
          runs["build_dataset_smollm2"]["public_over_private_cpu"])
    import transformers

    write_json_atomic(args.output, {
        "what": "the hf template path through transformers' public render_jinja_template (draftsmith's) vs its "
                "private compiled template: JinjaTemplate.render and the build-dataset stage, packaged ShareGPT",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.processor() or
        platform.machine(), "transformers": transformers.__version__, "render_conversations": args.conversations,
        "repeats": args.repeats, "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "runs": runs})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
