"""Acceptance length as served: send the benchmark prompts to a running SGLang server.

SGLang's native `/generate` endpoint returns `meta_info` with `completion_tokens` and
`spec_verify_ct` (verify steps of the request); its acceptance length is their ratio,
the prefill's first token included (our `tau_sglang`). Newer servers also return
`spec_accept_length`; the ratio is recomputed from the counts so old and new servers
agree. Greedy (temperature 0), one request at a time, so the numbers match `eval`'s.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from draftsmith.errors import DraftsmithError


@dataclass
class ServedReply:
    text: str
    completion_tokens: int
    verify_steps: int
    seconds: float


def generate(server_url: str, prompt_text: str, max_new_tokens: int, timeout: float = 600.0) -> ServedReply:
    body = json.dumps({"text": prompt_text,
                       "sampling_params": {"temperature": 0.0, "max_new_tokens": max_new_tokens}}).encode()
    request = urllib.request.Request(server_url.rstrip("/") + "/generate", data=body,
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read().decode("utf-8"))
    except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as e:
        raise DraftsmithError(f"SGLang server {server_url} did not answer /generate: {e}") from None
    seconds = time.perf_counter() - start
    if isinstance(payload, list):
        payload = payload[0]
    meta = payload.get("meta_info") or {}
    if "spec_verify_ct" not in meta:
        raise DraftsmithError(f"SGLang server {server_url} returned no spec_verify_ct: is it running with "
                              "--speculative-algorithm EAGLE3?")
    return ServedReply(text=payload.get("text", ""), completion_tokens=int(meta.get("completion_tokens", 0)),
                       verify_steps=int(meta["spec_verify_ct"]), seconds=seconds)


def served_summary(benchmark: str, replies: list[ServedReply]) -> dict:
    tokens = sum(r.completion_tokens for r in replies)
    steps = sum(r.verify_steps for r in replies)
    seconds = sum(r.seconds for r in replies)
    return {"benchmark": benchmark, "backend": "sglang", "requests": len(replies), "generated_tokens": tokens,
            "verify_steps": steps, "tau_sglang": tokens / steps if steps else None,
            "tau": (tokens - len(replies)) / steps if steps else None,
            "tokens_per_s": tokens / seconds if seconds else None}
