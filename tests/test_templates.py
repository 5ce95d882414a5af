"""Chat template registry and the `hf` jinja path, checked against real templates."""

from __future__ import annotations

import pytest

from draftsmith.data.templates import (REGISTRY, JinjaTemplate, TemplateError, get_template, template_names)
from draftsmith.errors import DraftsmithError
from tests._build_helpers import (CONVERSATIONS, REASONING, SINGLE, SYSTEM_MULTI, TOOLS, real_tokenizer,
                                  render_real, tokenizer_path)

REQUIRED = ["llama3", "llama4", "qwen", "qwen3", "deepseek-v3", "deepseek-r1-distill", "phi3", "phi4", "phi4-mini",
            "gemma", "mistral", "gpt-oss"]


def test_registry_names():
    assert set(REQUIRED) <= set(REGISTRY)
    assert template_names()[0] == "hf"
    with pytest.raises(Exception, match="unknown chat template 'nope'"):
        get_template("nope")


def _texts(rendered):
    return [rendered.text[a:b] for a, b in rendered.spans]


CHECKED = [(name, conv) for name, t in REGISTRY.items() if t.real_template for conv in CONVERSATIONS]


@pytest.mark.parametrize("name,conv", CHECKED)
def test_entry_renders_like_the_real_jinja_template(name, conv):
    """Same text as the model's own template, for every conversation the entry renders."""
    template = get_template(name)
    messages = CONVERSATIONS[conv]
    try:
        ours = template.render(messages, use_default_system=(name == "qwen"))
    except TemplateError as e:
        assert conv == "tools" and "does not render tool" in str(e)
        return
    real = render_real(template.real_template, messages)
    if name == "deepseek-r1-distill" and conv.startswith("reasoning"):
        # documented divergence: the real template drops all reasoning; we keep the final turn's
        think = "<think>\n" + messages[-1]["reasoning_content"] + "\n</think>\n\n"
        assert think in ours.text
        assert ours.text.replace(think, "") == real
    else:
        assert ours.text == real
    assert len(ours.spans) == sum(m["role"] == "assistant" for m in messages)


def test_llama31_entry_matches_llama33_template():
    assert get_template("llama3.1").render(SYSTEM_MULTI).text == render_real(
        "jinja:meta-llama-Llama-3.3-70B-Instruct", SYSTEM_MULTI)


def test_qwen_entry_matches_smollm2_template_with_its_system_prompt():
    smol = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    tok = real_tokenizer("smollm2")
    ours = get_template("qwen").render(SINGLE, system_prompt=smol)
    assert ours.text == tok.apply_chat_template(SINGLE, tokenize=False)
    assert get_template("qwen").render(SYSTEM_MULTI, system_prompt=smol).text.startswith(
        "<|im_start|>system\nYou are terse.")  # the data's own system message wins


GOLDEN_SPANS = {
    # hand-checked: what the model writes at serving time for SYSTEM_MULTI / REASONING / TOOLS
    ("llama3", "system_multi"): ["Hello!<|eot_id|>", "Blue.<|eot_id|>"],
    ("llama4", "system_multi"): ["Hello!<|eot|>", "Blue.<|eot|>"],
    ("qwen", "system_multi"): ["Hello!<|im_end|>", "Blue.\n<|im_end|>"],
    ("qwen3", "reasoning"): ["<think>\n7 has no divisors but 1 and 7.\n</think>\n\nYes.<|im_end|>"],
    ("qwen3", "reasoning_multi"): ["A.<|im_end|>", "<think>\nthink b\n</think>\n\nB.<|im_end|>"],
    ("qwen3", "tools"): ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
                         "It is 21 degrees.<|im_end|>"],
    ("qwen3", "single"): ["It is 4.<|im_end|>"],
    ("llama3.1", "tools"): ['{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
                            "It is 21 degrees.<|eot_id|>"],
    ("deepseek-v3", "system_multi"): ["Hello!<｜end▁of▁sentence｜>", "Blue.\n<｜end▁of▁sentence｜>"],
    ("deepseek-r1-distill", "reasoning"): ["7 has no divisors but 1 and 7.\n</think>\n\nYes.<｜end▁of▁sentence｜>"],
    ("phi3", "system_multi"): ["Hello!<|end|>", "Blue.\n<|end|>"],
    ("phi4", "system_multi"): ["Hello!<|im_end|>", "Blue.\n<|im_end|>"],
    ("phi4-mini", "system_multi"): ["Hello!<|end|>", "Blue.\n<|end|>"],
    ("gemma", "system_multi"): ["Hello!<end_of_turn>", "Blue.<end_of_turn>"],
    ("mistral", "system_multi"): ["Hello!</s>", "Blue.\n</s>"],
    ("gpt-oss", "reasoning"): ["<|channel|>analysis<|message|>7 has no divisors but 1 and 7.<|end|>"
                               "<|start|>assistant<|channel|>final<|message|>Yes.<|return|>"],
    ("gpt-oss", "system_multi"): ["<|channel|>final<|message|>Hello!<|end|>",
                                  "<|channel|>final<|message|>Blue.\n<|return|>"],
}


@pytest.mark.parametrize("key", list(GOLDEN_SPANS))
def test_golden_spans(key):
    name, conv = key
    assert _texts(get_template(name).render(CONVERSATIONS[conv])) == GOLDEN_SPANS[key]


GOLDEN_TEXT = {
    # templates without a real jinja file here, written from the models' published templates
    "llama4": "<|begin_of_text|><|header_start|>system<|header_end|>\n\nYou are terse.<|eot|>"
              "<|header_start|>user<|header_end|>\n\nHi there<|eot|><|header_start|>assistant<|header_end|>\n\nHello!<|eot|>"
              "<|header_start|>user<|header_end|>\n\nName a color.<|eot|>"
              "<|header_start|>assistant<|header_end|>\n\nBlue.<|eot|>",
    "phi4": "<|im_start|>system<|im_sep|>You are terse.<|im_end|><|im_start|>user<|im_sep|>Hi there<|im_end|>"
            "<|im_start|>assistant<|im_sep|>Hello!<|im_end|><|im_start|>user<|im_sep|> Name a color. <|im_end|>"
            "<|im_start|>assistant<|im_sep|>Blue.\n<|im_end|>",
    "phi4-mini": "<|system|>You are terse.<|end|><|user|>Hi there<|end|><|assistant|>Hello!<|end|>"
                 "<|user|> Name a color. <|end|><|assistant|>Blue.\n<|end|>",
}


@pytest.mark.parametrize("name", list(GOLDEN_TEXT))
def test_golden_text_without_real_template(name):
    assert get_template(name).render(SYSTEM_MULTI).text == GOLDEN_TEXT[name]


def test_llama4_golden_spans_trimmed():
    assert _texts(get_template("llama4").render(SYSTEM_MULTI)) == ["Hello!<|eot|>", "Blue.<|eot|>"]


def test_default_system_prompt_is_opt_in():
    t = get_template("qwen")
    assert "system" not in t.render(SINGLE).text
    assert t.render(SINGLE, use_default_system=True).text.startswith("<|im_start|>system\nYou are Qwen")
    assert t.render(SINGLE, system_prompt="Custom.").text.startswith("<|im_start|>system\nCustom.<|im_end|>\n")


def test_empty_think_block_is_not_supervised():
    r = get_template("qwen3").render(SINGLE)
    assert "<think>\n\n</think>\n\n" in r.text
    assert _texts(r) == ["It is 4.<|im_end|>"]


def test_tool_results_are_never_supervised():
    r = get_template("qwen3").render(TOOLS)
    assert all("tool_response" not in s and "temp" not in s for s in _texts(r))


@pytest.mark.parametrize("name", [n for n in REGISTRY])
def test_preformatted_parse_finds_the_rendered_spans(name):
    t = get_template(name)
    for conv in ("single", "system_multi", "reasoning_multi"):
        r = t.render(CONVERSATIONS[conv])
        if name == "gpt-oss" and conv == "reasoning_multi":
            continue  # harmony's analysis message is parsed as its own reply: documented in docs/templates.md
        assert t.parse(r.text).spans == r.spans, conv


def test_preformatted_foreign_markers_are_named():
    text = get_template("llama3").render(SINGLE).text
    with pytest.raises(TemplateError, match="no qwen assistant turn in text.*llama3"):
        get_template("qwen").parse(text)


# ---------------------------------------------------------------- hf (jinja) path
PAIRS = [("qwen3", "qwen3", None), ("llama3_1", "llama3", None), ("gemma3", "gemma", None),
         ("deepseek_v3", "deepseek-v3", None),
         ("smollm2", "qwen", "You are a helpful AI assistant named SmolLM, trained by Hugging Face")]


@pytest.mark.parametrize("tok_name,entry,system", PAIRS)
def test_hf_spans_agree_with_registry(tok_name, entry, system):
    """Two independent methods (declarative construction vs prompt-diff on the real jinja) agree."""
    jt = JinjaTemplate(real_tokenizer(tok_name))
    for conv_name, conv in CONVERSATIONS.items():
        try:
            named = get_template(entry).render(conv, system_prompt=system)
        except TemplateError:
            continue
        try:
            hf = jt.render(conv)
        except TemplateError as e:
            assert conv_name == "tools", e
            continue
        assert hf.text == named.text, conv_name
        assert hf.spans == named.spans, conv_name


def test_hf_text_equals_apply_chat_template():
    tok = real_tokenizer("qwen3")
    for conv in CONVERSATIONS.values():
        assert JinjaTemplate(tok).render(conv).text == tok.apply_chat_template(conv, tokenize=False)


def test_hf_skips_tool_calls_the_template_cannot_render():
    with pytest.raises(TemplateError, match="does not render tool calls"):
        JinjaTemplate(real_tokenizer("smollm2")).render(TOOLS)


def _jinja_with(tok_name: str, template_name: str) -> JinjaTemplate:
    from draftsmith import resources

    return JinjaTemplate(real_tokenizer(tok_name), chat_template=resources.jinja_template(template_name))


def test_hf_deepseek_v31_empty_think_is_prompt():
    jt = _jinja_with("deepseek_v3", "deepseek-ai-DeepSeek-V3.1")
    r = jt.render(SYSTEM_MULTI)
    assert "<｜Assistant｜><think></think>Hello!" in r.text
    assert _texts(r) == ["Hello!<｜end▁of▁sentence｜>", "Blue.\n<｜end▁of▁sentence｜>"]


def test_hf_r1_distill_real_template_reply_starts_after_assistant_tag():
    jt = _jinja_with("deepseek_v3", "deepseek-ai-DeepSeek-R1-Distill-Llama-8B")
    assert _texts(jt.render(REASONING)) == ["Yes.<｜end▁of▁sentence｜>"]


def test_hf_gpt_oss_matches_registry_spans():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_path("smollm2")))  # a private copy: tokens are added
    tok.add_special_tokens({"additional_special_tokens": ["<|start|>", "<|end|>", "<|message|>", "<|channel|>",
                                                          "<|return|>", "<|call|>"]})
    from draftsmith import resources

    jt = JinjaTemplate(tok, chat_template=resources.jinja_template("openai-gpt-oss-120b"),
                       stop_tokens=["<|return|>", "<|call|>", "<|end|>"])
    for conv in ("single", "system_multi"):
        assert _texts(jt.render(CONVERSATIONS[conv])) == _texts(get_template("gpt-oss").render(CONVERSATIONS[conv]))


def test_hf_system_prompt_fills_only_missing_system():
    jt = JinjaTemplate(real_tokenizer("qwen3"))
    assert jt.render(SINGLE, system_prompt="Sys.").text.startswith("<|im_start|>system\nSys.<|im_end|>")
    assert jt.render(SYSTEM_MULTI, system_prompt="Sys.").text.startswith("<|im_start|>system\nYou are terse.")


def test_hf_preformatted_markers():
    jt = JinjaTemplate(real_tokenizer("qwen3"))
    r = get_template("qwen3").render(SYSTEM_MULTI)
    assert jt.parse(r.text).spans == r.spans


def test_hf_generation_blocks_give_the_spans():
    template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
                "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}"
                "{% else %}{{ m['content'] + '<|im_end|>' }}{% endif %}{{ '\\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    jt = JinjaTemplate(real_tokenizer("smollm2"), chat_template=template)
    r = jt.render(SYSTEM_MULTI)
    assert r.text == get_template("qwen").render(SYSTEM_MULTI).text
    assert _texts(r) == ["Hello!<|im_end|>", "Blue.\n<|im_end|>"]


def test_the_one_call_into_transformers_chat_templates():
    """render_chat_template (data/templates/jinja.py) is draftsmith's only use of transformers' chat-template
    code (render_jinja_template): it gives apply_chat_template's text, the {% generation %} spans as character
    offsets, transformers' sandbox, and a syntax error stops the stage; a change in transformers fails here."""
    from draftsmith.data.templates import jinja

    tok = real_tokenizer("qwen3")
    variables = {k: v for k, v in tok.special_tokens_map.items() if isinstance(v, str)}
    for conv in CONVERSATIONS.values():
        for prompt in (False, True):
            text, spans = jinja.render_chat_template(tok.chat_template, conv, add_generation_prompt=prompt,
                                                     **variables)
            assert text == tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=prompt)
            assert spans == []
    template = ("{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}"
                "{{ m.content }}</s>{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}")
    text, spans = jinja.render_chat_template(template, SYSTEM_MULTI, generation_spans=True)
    assert text == "<system>You are terse.<user>Hi there<assistant>Hello!</s><user> Name a color. <assistant>Blue.\n</s>"
    assert [text[a:b] for a, b in spans] == ["Hello!</s>", "Blue.\n</s>"]
    for generation_spans in (False, True):       # the sandbox: no attribute walk to Python internals
        with pytest.raises(TemplateError, match="SecurityError"):
            jinja.render_chat_template("{{ messages.__class__.__mro__ }}", SINGLE, generation_spans=generation_spans)
    with pytest.raises(DraftsmithError, match="does not compile: line 1") as err:
        JinjaTemplate(tok, chat_template="{% for m in messages %}{{ m.content }}")
    assert not isinstance(err.value, TemplateError)     # the stage stops; it is not one row's skip
