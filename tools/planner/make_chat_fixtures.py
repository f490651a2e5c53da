#!/usr/bin/env python3
"""Writes crates/cielr-planner/tests/fixtures/chat_templates_reference.json: chat templates,
conversations, and what transformers' `apply_chat_template(..., tokenize=False)` renders for
each (template, conversation, add_generation_prompt), or the error it raises.

Templates:
  chatml        the generic ChatML template (as in tokenizer_tiny_bpe.gguf)
  smollm2       SmolLM2-135M-Instruct's own template, read from its GGUF (--smollm2); without
                the option the text already in the fixture is kept
  llama3        the Meta Llama 3 Instruct template (transcribed)
  qwen2.5       a Qwen2.5-Instruct-style template with tool calls (transcribed)
  mistral       a Mistral-style template using raise_exception and str.strip()
  kitchen_sink  exercises namespace, loop controls, tojson (indent, sort_keys), Python string
                methods and slicing

No network and no PyTorch are needed: the tokenizer object is built from
tokenizer_tiny_bpe.json (its vocabulary does not matter for rendering).

Usage: /work/venv-tok/bin/pip install transformers tokenizers jinja2 gguf
       /work/venv-tok/bin/python tools/planner/make_chat_fixtures.py \
           [--smollm2 ~/.cache/cielr/SmolLM2-135M-Instruct.Q4_1.gguf]
"""

import argparse
import json
import os
import sys

import transformers
from transformers import PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "crates", "cielr-planner", "tests", "fixtures")
FIXTURE = os.path.join(OUT, "chat_templates_reference.json")

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'].strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'].strip() + eos_token }}{% endif %}"
    "{% endfor %}"
)

KITCHEN_SINK = """{%- set ns = namespace(n=0, roles=[]) -%}
{%- for m in messages -%}
  {%- if m.role == 'system' %}{% continue %}{% endif -%}
  {%- set ns.n = ns.n + 1 -%}
  {%- if ns.n > 3 %}{% break %}{% endif %}
[{{ ns.n }}/{{ loop.index }}] {{ m.role | upper }}: {{ m.content | trim }} {{ m | tojson }}
{% endfor -%}
{%- if add_generation_prompt %}{{ bos_token }}>{{ eos_token }}{% endif %}
{{ messages | tojson(indent=2) }}
{{ {'z': 1, 'a': [true, none, 'x'], 'm': 2} | tojson(sort_keys=true) }}
{{ messages[0].content.startswith('You') }} {{ messages[-1].content.split(' ') | length }} {{ 'abc'.upper() }}
{{ messages[0]['content'].replace('a', 'A') }} {{ messages[1:] | length }} {{ messages | map(attribute='role') | join(',') }}
{%- for m in messages[::-1] %} {{ loop.index0 }}{{ m.role[0] }}{% endfor %}
{% if messages | length > 1 and messages[1].role != 'system' %}second={{ messages[1].role }}{% else %}none{% endif %}
"""

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "You are a planner."},
        {"role": "user", "content": "Move the cup left."},
        {"role": "assistant", "content": "OK."},
        {"role": "user", "content": "  Now the plate?  \n"},
    ],
    [
        {"role": "user", "content": 'Café 日本語 🎉\n{"targets": [1, 2]}'},
        {"role": "assistant", "content": "Done.\n"},
        {"role": "user", "content": "And a\ttab, 'quotes' and \"double quotes\"."},
    ],
    [
        {"role": "system", "content": "You answer in JSON."},
        {"role": "user", "content": "What is left of the plate?"},
    ],
]


def load_smollm2_template(path):
    import gguf

    r = gguf.GGUFReader(path)
    return r.fields["tokenizer.chat_template"].contents()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2", help="path of SmolLM2-135M-Instruct.Q4_1.gguf")
    args = ap.parse_args()

    templates = {
        "chatml": {"template": CHATML, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"},
        "llama3": {"template": LLAMA3, "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        "qwen2.5": {"template": QWEN25, "bos_token": "", "eos_token": "<|im_end|>"},
        "mistral": {"template": MISTRAL, "bos_token": "<s>", "eos_token": "</s>"},
        "kitchen_sink": {"template": KITCHEN_SINK, "bos_token": "<s>", "eos_token": "</s>"},
    }
    if args.smollm2:
        smol = load_smollm2_template(args.smollm2)
    elif os.path.exists(FIXTURE):
        smol = json.load(open(FIXTURE))["templates"]["smollm2"]["template"]
    else:
        sys.exit("the first run needs --smollm2 PATH for SmolLM2's template")
    templates["smollm2"] = {"template": smol, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}

    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(OUT, "tokenizer_tiny_bpe.json"))
    cases = []
    for name, t in templates.items():
        tok.bos_token = t["bos_token"] or None
        tok.eos_token = t["eos_token"] or None
        for ci, conv in enumerate(CONVERSATIONS):
            for gen in (False, True):
                case = {"template": name, "conversation": ci, "add_generation_prompt": gen}
                try:
                    case["output"] = tok.apply_chat_template(
                        conv, chat_template=t["template"], tokenize=False, add_generation_prompt=gen
                    )
                except Exception as e:  # the template raised: record the message
                    case["error"] = str(e)
                cases.append(case)
    with open(FIXTURE, "w") as f:
        json.dump(
            {
                "generator": f"tools/planner/make_chat_fixtures.py (transformers {transformers.__version__} "
                "apply_chat_template)",
                "templates": templates,
                "conversations": CONVERSATIONS,
                "cases": cases,
            },
            f,
            ensure_ascii=False,
            indent=1,
        )
        f.write("\n")
    errors = sum("error" in c for c in cases)
    print(f"{len(cases)} cases ({errors} errors) -> {FIXTURE}", file=sys.stderr)


if __name__ == "__main__":
    main()
