"""The named chat templates (`--chat-template NAME`) and the lookup by name.

Each entry is a `spec.ChatTemplate`. An entry whose model has a real jinja template on hand
names it in `real_template` ("tokenizer:<packaged tokenizer>" or "jinja:<packaged template
file>"), and tests/test_templates.py checks that the entry renders exactly what that jinja
template renders. `hf` is not an entry: it is the tokenizer's own template (jinja.py).
"""

from __future__ import annotations

import dataclasses

from draftsmith.data.templates.spec import ChatTemplate, Think, Tools
from draftsmith.errors import DraftsmithError

_CHATML_TOOLS = Tools(
    call='<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>',
    result=("\n<tool_response>\n", "\n</tool_response>"),
    result_group=("<|im_start|>user", "<|im_end|>"),
)

_LLAMA31_DATE = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"

_GPT_OSS_SYSTEM = ("<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
                   "Knowledge cutoff: 2024-06\nCurrent date: 2025-08-05\n\nReasoning: medium\n\n"
                   "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>")

_ENTRIES = [
    ChatTemplate(
        name="llama3", description="Llama 3.0 headers (<|start_header_id|>role<|end_header_id|>), no forced system",
        bos="<|begin_of_text|>", trim=True,
        system=("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"),
        user=("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
        assistant=("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
        default_system="You are a helpful assistant.",
        real_template="tokenizer:llama3_1",
    ),
    ChatTemplate(
        name="llama3.1", description="Llama 3.1/3.3 headers: a system turn always, with the knowledge-date lines",
        bos="<|begin_of_text|>", trim=True, system_always=True,
        system=("<|start_header_id|>system<|end_header_id|>\n\n" + _LLAMA31_DATE, "<|eot_id|>"),
        user=("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
        assistant=("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
        tools=Tools(call='{{"name": "{name}", "parameters": {arguments}}}',
                    result=("<|start_header_id|>ipython<|end_header_id|>\n\n", "<|eot_id|>"),
                    single_call=True, drops_content=True, result_as_json=True),
        real_template="jinja:meta-llama-Llama-3.1-8B-Instruct",
    ),
    ChatTemplate(
        name="llama4", description="Llama 4 headers (<|header_start|>role<|header_end|>, <|eot|>)",
        bos="<|begin_of_text|>", trim=True,
        system=("<|header_start|>system<|header_end|>\n\n", "<|eot|>"),
        user=("<|header_start|>user<|header_end|>\n\n", "<|eot|>"),
        assistant=("<|header_start|>assistant<|header_end|>\n\n", "<|eot|>"),
        default_system="You are a helpful assistant.",
    ),
    ChatTemplate(
        name="qwen", description="ChatML (Qwen2/2.5, SmolLM2): <|im_start|>role\\n ... <|im_end|>\\n",
        system=("<|im_start|>system\n", "<|im_end|>"),
        user=("<|im_start|>user\n", "<|im_end|>"),
        assistant=("<|im_start|>assistant\n", "<|im_end|>"), separator="\n",
        default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        tools=_CHATML_TOOLS,
        real_template="jinja:Qwen-Qwen2.5-7B-Instruct",
    ),
    ChatTemplate(
        name="qwen3", description="Qwen3 ChatML with <think> reasoning (kept after the last user query)",
        system=("<|im_start|>system\n", "<|im_end|>"),
        user=("<|im_start|>user\n", "<|im_end|>"),
        assistant=("<|im_start|>assistant\n", "<|im_end|>"), separator="\n",
        think=Think(open="<think>\n", close="\n</think>\n\n", scope="after_last_user",
                    empty="<think>\n\n</think>\n\n", strip="\n"),
        tools=dataclasses.replace(_CHATML_TOOLS, string_arguments_verbatim=True),
        real_template="tokenizer:qwen3",
    ),
    ChatTemplate(
        name="deepseek-v3", description="DeepSeek-V3: <｜User｜> / <｜Assistant｜> ... <｜end▁of▁sentence｜>",
        bos="<｜begin▁of▁sentence｜>", system_style="bare",
        user=("<｜User｜>", ""), assistant=("<｜Assistant｜>", "<｜end▁of▁sentence｜>"),
        real_template="tokenizer:deepseek_v3",
    ),
    ChatTemplate(
        name="deepseek-r1-distill",
        description="DeepSeek-R1-Distill (Qwen/Llama): DeepSeek turns, prompt ends with <think>\\n",
        bos="<｜begin▁of▁sentence｜>", system_style="bare",
        user=("<｜User｜>", ""), assistant=("<｜Assistant｜>", "<｜end▁of▁sentence｜>"),
        think=Think(open="<think>\n", close="\n</think>\n\n", scope="after_last_user", open_in_prompt=True,
                    strip="\n"),
        real_template="jinja:deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
    ),
    ChatTemplate(
        name="phi3", description="Phi-3 / Phi-3.5: <|role|>\\n ... <|end|>\\n, <|endoftext|> at the end",
        system=("<|system|>\n", "<|end|>"), user=("<|user|>\n", "<|end|>"),
        assistant=("<|assistant|>\n", "<|end|>"), separator="\n", end_of_text="<|endoftext|>",
        default_system="You are a helpful assistant.",
        real_template="jinja:microsoft-Phi-3.5-mini-instruct",
    ),
    ChatTemplate(
        name="phi4", description="Phi-4: <|im_start|>role<|im_sep|> ... <|im_end|>",
        system=("<|im_start|>system<|im_sep|>", "<|im_end|>"), user=("<|im_start|>user<|im_sep|>", "<|im_end|>"),
        assistant=("<|im_start|>assistant<|im_sep|>", "<|im_end|>"),
        default_system="You are a helpful assistant.",
    ),
    ChatTemplate(
        name="phi4-mini", description="Phi-4-mini: <|role|> ... <|end|>",
        system=("<|system|>", "<|end|>"), user=("<|user|>", "<|end|>"), assistant=("<|assistant|>", "<|end|>"),
        default_system="You are a helpful assistant.",
    ),
    ChatTemplate(
        name="gemma", description="Gemma 2/3: <start_of_turn>user|model\\n ... <end_of_turn>\\n, system in first user turn",
        bos="<bos>", trim=True, system_style="first_user",
        user=("<start_of_turn>user\n", "<end_of_turn>"), assistant=("<start_of_turn>model\n", "<end_of_turn>"),
        separator="\n", real_template="tokenizer:gemma3",
    ),
    ChatTemplate(
        name="mistral", description="Mistral (Nemo / tekken): [INST] ... [/INST] reply</s>, system in last user turn",
        bos="<s>", system_style="last_user",
        user=("[INST]", "[/INST]"), assistant=("", "</s>"), reply_opens="[/INST]",
        real_template="jinja:mistralai-Mistral-Nemo-Instruct-2407",
    ),
    ChatTemplate(
        name="gpt-oss", description="gpt-oss harmony: analysis + final channels, <|return|> ends the last reply",
        preamble=_GPT_OSS_SYSTEM,
        system=("<|start|>developer<|message|># Instructions\n\n", "\n\n<|end|>"),
        user=("<|start|>user<|message|>", "<|end|>"), assistant=("<|start|>assistant", "<|end|>"),
        content_prefix="<|channel|>final<|message|>", last_end_of_turn="<|return|>",
        think=Think(open="<|channel|>analysis<|message|>", close="<|end|><|start|>assistant", scope="last_message"),
        real_template="jinja:openai-gpt-oss-120b",
    ),
]

REGISTRY: dict[str, ChatTemplate] = {t.name: t for t in _ENTRIES}
HF = "hf"


def template_names() -> list[str]:
    return [HF, *REGISTRY]


def get_template(name: str) -> ChatTemplate:
    try:
        return REGISTRY[name]
    except KeyError:
        raise DraftsmithError(f"unknown chat template {name!r}; known: {', '.join(template_names())}") from None
