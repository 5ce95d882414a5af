"""Loss masks: the straddling rule, golden masks on real tokenizers, and a property test."""

from __future__ import annotations

import random

import numpy as np
import pytest

from draftsmith.data.loss_mask import char_spans_to_token_mask, tokenize_with_mask
from draftsmith.data.templates import JinjaTemplate, get_template
from tests._build_helpers import (REASONING, TOOLS, annotate, random_conversation, real_backend,
                                  real_tokenizer)


def test_straddling_and_empty_tokens():
    # text "abcdefghij", span [3, 6) = "def"
    offsets = np.array([[0, 2], [2, 4], [4, 5], [5, 7], [7, 10], [6, 6], [3, 3]])
    mask = char_spans_to_token_mask(offsets, [(3, 6)])
    # "ab" no; "cd" straddles the start: yes; "e" yes; "fg" straddles the end: yes; "hij" no;
    # empty token at 6 (first char after the span) no; empty token at 3 yes
    assert mask.tolist() == [0, 1, 1, 1, 0, 0, 1]
    assert mask.dtype == np.int8


def test_overlapping_and_adjacent_spans():
    offsets = np.array([[i, i + 1] for i in range(6)])
    assert char_spans_to_token_mask(offsets, [(0, 2), (1, 3), (4, 4), (5, 6)]).tolist() == [1, 1, 1, 0, 0, 1]
    assert char_spans_to_token_mask(offsets, [(5, 6), (0, 1)]).tolist() == [1, 0, 0, 0, 0, 1]  # any order
    assert char_spans_to_token_mask(offsets, []).tolist() == [0] * 6
    assert char_spans_to_token_mask(np.zeros((0, 2), dtype=np.int64), [(0, 1)]).tolist() == []


CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4, of course."}]

# Reviewed token by token: headers, system and user text unsupervised; reply tokens and the
# end-of-turn token supervised; the glue "\n" after it and Qwen3's empty think block not.
GOLDEN = {
    ("smollm2", "qwen", "conv"):
        "<|im_start|>|system|\n|Be| brief|.|<|im_end|>|\n|<|im_start|>|user|\n|Hi| there|<|im_end|>|\n|<|im_start|>|ass|"
        "istant|\n|«Hello»|«!»|« How»|« can»|« I»|« help»|«?»|«<|im_end|>»|\n|<|im_start|>|user|\n|2|+|2|?|<|im_end|>|"
        "\n|<|im_start|>|ass|istant|\n|«4»|«,»|« of»|« course»|«.»|«<|im_end|>»|\n",
    ("qwen3", "qwen3", "conv"):
        "<|im_start|>|system|\n|Be| brief|.|<|im_end|>|\n|<|im_start|>|user|\n|Hi| there|<|im_end|>|\n|<|im_start|>|"
        "assistant|\n|«Hello»|«!»|« How»|« can»|« I»|« help»|«?»|«<|im_end|>»|\n|<|im_start|>|user|\n|2|+|2|?|"
        "<|im_end|>|\n|<|im_start|>|assistant|\n|<think>|\n\n|</think>|\n\n|«4»|«,»|« of»|« course»|«.»|«<|im_end|>»|\n",
    ("llama3_1", "llama3", "conv"):
        "<|begin_of_text|>|<|start_header_id|>|system|<|end_header_id|>|\n\n|Be| brief|.|<|eot_id|>|<|start_header_id|>|"
        "user|<|end_header_id|>|\n\n|Hi| there|<|eot_id|>|<|start_header_id|>|assistant|<|end_header_id|>|\n\n|«Hello»|"
        "«!»|« How»|« can»|« I»|« help»|«?»|«<|eot_id|>»|<|start_header_id|>|user|<|end_header_id|>|\n\n|2|+|2|?|"
        "<|eot_id|>|<|start_header_id|>|assistant|<|end_header_id|>|\n\n|«4»|«,»|« of»|« course»|«.»|«<|eot_id|>»",
    ("gemma3", "gemma", "conv"):
        "<bos>|<start_of_turn>|user|\n|Be| brief|.|\n\n|Hi| there|<end_of_turn>|\n|<start_of_turn>|model|\n|«Hello»|«!»|"
        "« How»|« can»|« I»|« help»|«?»|«<end_of_turn>»|\n|<start_of_turn>|user|\n|2|+|2|?|<end_of_turn>|\n|"
        "<start_of_turn>|model|\n|«4»|«,»|« of»|« course»|«.»|«<end_of_turn>»|\n",
    ("deepseek_v3", "deepseek-v3", "conv"):
        "<｜begin▁of▁sentence｜>|Be| brief|.|<｜User｜>|Hi| there|<｜Assistant｜>|«Hello»|«!»|« How»|« can»|« I»|« help»|"
        "«?»|«<｜end▁of▁sentence｜>»|<｜User｜>|2|+|2|?|<｜Assistant｜>|«4»|«,»|« of»|« course»|«.»|«<｜end▁of▁sentence｜>»",
    ("qwen3", "qwen3", "reasoning"):
        "<|im_start|>|user|\n|Is| |7| prime|?|<|im_end|>|\n|<|im_start|>|assistant|\n|«<think>»|«\n»|«7»|« has»|« no»|"
        "« div»|«isors»|« but»|« »|«1»|« and»|« »|«7»|«.\n»|«</think>»|«\n\n»|«Yes»|«.»|«<|im_end|>»|\n",
    ("qwen3", "qwen3", "tools"):
        "<|im_start|>|user|\n|Weather| in| Paris|?|<|im_end|>|\n|<|im_start|>|assistant|\n|«<tool_call>»|«\n»|«{\"»|"
        "«name»|«\":»|« \"»|«get»|«_weather»|«\",»|« \"»|«arguments»|«\":»|« {\"»|«city»|«\":»|« \"»|«Paris»|«\"}}\n»|"
        "«</tool_call>»|«<|im_end|>»|\n|<|im_start|>|user|\n|<tool_response>|\n|{\"|temp|\":| |2|1|}\n|</tool_response>|"
        "<|im_end|>|\n|<|im_start|>|assistant|\n|<think>|\n\n|</think>|\n\n|«It»|« is»|« »|«2»|«1»|« degrees»|«.»|«<|im_end|>»|\n",
}
_CONVS = {"conv": CONV, "reasoning": REASONING, "tools": TOOLS}


@pytest.mark.parametrize("key", list(GOLDEN))
def test_golden_token_masks(key):
    tok_name, template, conv = key
    tok = real_tokenizer(tok_name)
    r = get_template(template).render(_CONVS[conv])
    [(ids, mask)] = tokenize_with_mask(real_backend(tok_name), [r.text], [r.spans])
    assert annotate(tok, ids, mask) == GOLDEN[key]


@pytest.mark.parametrize("tok_name", ["smollm2", "qwen3", "llama3_1", "gemma3", "deepseek_v3"])
def test_ids_equal_apply_chat_template(tok_name):
    """One pass over the rendered text gives exactly the ids transformers gives."""
    tok = real_tokenizer(tok_name)
    jt = JinjaTemplate(tok)
    backend = real_backend(tok_name)
    conv = CONV[1:] if tok_name == "gemma3" else CONV
    r = jt.render(conv)
    [(ids, _)] = tokenize_with_mask(backend, [r.text], [r.spans])
    expected = tok.apply_chat_template(conv, tokenize=True, return_dict=False)
    assert ids.tolist() == list(expected)


PROPERTY = [("smollm2", "qwen"), ("qwen3", "qwen3"), ("llama3_1", "llama3"), ("llama3_1", "llama3.1"),
            ("gemma3", "gemma"), ("deepseek_v3", "deepseek-v3"), ("qwen3", "hf"), ("llama3_1", "hf"),
            ("smollm2", "hf")]


def _expected_reply(template, message, in_scope_reasoning: bool) -> str:
    content = message["content"]
    if template.trim:
        content = content.strip()
    reasoning = ""
    if in_scope_reasoning and message.get("reasoning_content"):
        reasoning = template.think.open + message["reasoning_content"].strip("\n") + template.think.close
    return reasoning + content + template.end_of_turn


@pytest.mark.parametrize("tok_name,template_name", PROPERTY)
def test_masked_tokens_decode_to_replies(tok_name, template_name):
    """For random conversations, masked tokens decode to exactly the replies plus their end-of-turn markers."""
    rng = random.Random(f"{tok_name}/{template_name}")
    tok = real_tokenizer(tok_name)
    backend = real_backend(tok_name)
    reference = get_template({"smollm2": "qwen", "qwen3": "qwen3", "llama3_1": "llama3"}[tok_name]
                             if template_name == "hf" else template_name)
    renderer = JinjaTemplate(tok) if template_name == "hf" else reference
    with_reasoning = reference.think is not None
    convs = [random_conversation(rng, reasoning=with_reasoning) for _ in range(40)]
    if tok_name == "smollm2" and template_name == "hf":
        convs = [c if c[0]["role"] == "system" else [{"role": "system", "content": "S"}] + c for c in convs]
    rendered = [renderer.render(c) for c in convs]
    results = tokenize_with_mask(backend, [r.text for r in rendered], [r.spans for r in rendered])
    for conv, (ids, mask) in zip(convs, results):
        body = [m for m in conv if m["role"] != "system"]
        last_user = max(i for i, m in enumerate(body) if m["role"] == "user")
        expected = "".join(_expected_reply(reference, m, i > last_user)
                           for i, m in enumerate(body) if m["role"] == "assistant")
        assert tok.decode(ids[mask.astype(bool)].tolist()) == expected
        assert tok.decode(ids.tolist()) == renderer.render(conv).text
