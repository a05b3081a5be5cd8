"""Writes a tiny Llama-architecture chat model with random weights, and the
golden outputs of the reference implementation (Hugging Face transformers on
CPU PyTorch) that lpworker's Candle `llm` pipeline must reproduce exactly.

Files: config.json, generation_config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, special_tokens_map.json (Hugging Face layout, as a real
model such as meta-llama/Meta-Llama-3.1-8B-Instruct has) and golden.json:
the chat-templated prompt's token ids and the greedy continuation's token ids.

    python models/lpworker/tiny-llama/make_model.py [OUT_DIR]

Needs torch, transformers (4.57) and tokenizers; run once, outputs committed.
"""
import json
import os
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tiny_tokenizer import train  # noqa: E402

out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
os.makedirs(out_dir, exist_ok=True)

SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Llama 3's chat template, shortened (no tools, no date header).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

raw = train(384, SPECIAL)
tokenizer = PreTrainedTokenizerFast(
    tokenizer_object=raw,
    bos_token="<|begin_of_text|>",
    eos_token="<|eot_id|>",
    chat_template=CHAT_TEMPLATE,
)
tokenizer.save_pretrained(out_dir)
vocab = raw.get_vocab_size()
ids = {t: raw.token_to_id(t) for t in SPECIAL}

config = LlamaConfig(
    vocab_size=vocab,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    bos_token_id=ids["<|begin_of_text|>"],
    eos_token_id=[ids["<|end_of_text|>"], ids["<|eot_id|>"]],
    tie_word_embeddings=False,
    # Large weights so that the greedy choice wins by a clear margin and a
    # float rounding difference cannot flip it.
    initializer_range=0.25,
    torch_dtype="float32",
)

CASES = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 24},
    {
        "messages": [
            {"role": "system", "content": "You transcode video."},
            {"role": "user", "content": "Hello, how are you today?"},
            {"role": "assistant", "content": "I am fine, thank you."},
            {"role": "user", "content": "Tell me about Livepeer tickets."},
        ],
        "max_tokens": 32,
    },
]

# The first seed whose greedy continuations are long (no early end of text)
# and whose every choice wins by a clear margin.
for seed in range(100):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = ids["<|end_of_text|>"]
    golden, ok = [], True
    for case in CASES:
        prompt = tokenizer.apply_chat_template(case["messages"], add_generation_prompt=True, tokenize=True)
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt]), max_new_tokens=case["max_tokens"], do_sample=False,
                output_scores=True, return_dict_in_generate=True,
            )
        new = out.sequences[0, len(prompt):].tolist()
        margins = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores]
        if len(new) < case["max_tokens"] or min(margins) < 0.05:
            ok = False
            break
        golden.append({
            "messages": case["messages"], "max_tokens": case["max_tokens"],
            "prompt_ids": prompt, "output_ids": new,
            "text": tokenizer.decode(new, skip_special_tokens=True),
            "min_margin": round(min(margins), 4),
        })
    if ok:
        break
else:
    sys.exit("no seed gave long, clear-margin continuations")

model.save_pretrained(out_dir, safe_serialization=True)
model.generation_config.save_pretrained(out_dir)
with open(os.path.join(out_dir, "golden.json"), "w") as f:
    json.dump({"reference": "transformers LlamaForCausalLM.generate, greedy, float32 CPU", "seed": seed,
               "cases": golden}, f, indent=1)
print(f"seed {seed}: wrote {out_dir}")
