"""Independent reference for the Rust core: Hugging Face transformers + tokenizers.

Test tooling only (never a runtime dependency). Writes the committed goldens under tests/:
  tests/golden/tokenizer.json     token ids for tricky strings (HF tokenizer built from the GGUF)
  tests/golden/chat.json          the model's chat template applied by transformers (text + ids)
  tests/golden/logits.json        per-token log-probs, top-5 next tokens, greedy continuation
  tests/fixtures/tiny-llama/      a tiny random LLaMA checkpoint (config.json + model.safetensors)
                                  with its logits, to test the safetensors loader independently
  tests/fixtures/tiny-llama3/     the same for a Llama-3-style config: head_dim wider than
                                  hidden/heads, rope_theta 500000, llama3 RoPE scaling
  tests/fixtures/smollm2-tokenizer.json.gz   the HF tokenizer.json, to test that loader

Usage: tools/reference/setup-venv.sh && .venv-ref/bin/python tools/reference/make_goldens.py [chat|tokenizer|tiny-llama3]
("chat" regenerates only the chat goldens, "tokenizer" only the token ids and tokenizer.json,
"tiny-llama3" only that checkpoint)
"""
import gzip, json, os, sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_DIR = os.path.join(ROOT, "assets", "model")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
torch.set_num_threads(2)

TOKENIZER_CASES = [
    "The capital of France is",
    "Hello world!",
    "  leading spaces and trailing   ",
    "it's we've they'll I'm you'd she's 'quoted'",
    "Numbers: 1234567890, 3.14159, -42, 1,000,000 and 2024-11-29.",
    "tabs\tand\nnewlines\n\n\nand \r\n crlf",
    "Ünïcödé: naïve café, 日本語のテキスト, Ελληνικά, русский текст",
    "emoji 🤗🚀 and symbols ©®™ ∑∫√ ≤≥",
    "code: def f(x):\n    return x**2  # square\n",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "special<|endoftext|>inside<repo_name>text",
    "Question: Which factor will most likely cause a person to develop a fever?\nAnswer: a bacterial population in the bloodstream",
    "    indented\n\t\tdouble tab  \n",
    "URL https://example.com/a?b=c&d=e#f and email someone@example.org",
    "",
    " ",
    "a",
    "\u00a0non-breaking\u2009thin\u3000ideographic spaces",
    # Whitespace runs before text (GPT-2's `\s+(?!\S)`), at the end, and of every kind.
    "a  b   c\n\nd \n e\t\t f \n\n",
    "x \u00a0\u00a0y\u2028\u2029z\r\n\r\nw \t!  ?\n\n5  6",
    "\n\n\n",
    "end   ",
    # Long words (BPE on hundreds of symbols) and adjacent special tokens.
    "x" * 3000,
    "ab" * 700 + " " + "9" * 500,
    "<|im_start|><|im_start|>user<|im_end|><|endoftext|>",
]

LOGIT_PROMPTS = [
    "The capital of France is",
    "Question: What is the boiling point of water at sea level?\nAnswer: 100 degrees Celsius",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
]

CHAT_CASES = [
    ([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}], False),
    ([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Capital of France?"},
      {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"},
      {"role": "assistant", "content": "Rome, since 1871."}], False),
    ([{"role": "user", "content": "Write a haiku about   spaces\n\tand tabs"}], True),
]


def chat_goldens(tok):
    cases = []
    for messages, gen in CHAT_CASES:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        ids = tok(text, add_special_tokens=False).input_ids
        cases.append({"messages": messages, "add_generation_prompt": gen, "text": text, "ids": ids})
    with open(os.path.join(ROOT, "tests/golden/chat.json"), "w") as f:
        json.dump({"source": "transformers apply_chat_template (gguf_file=%s)" % GGUF, "cases": cases}, f, indent=1, ensure_ascii=False)


def tiny_checkpoint(name, ids, **config):
    """A tiny random checkpoint written by transformers itself, with its logits on `ids`."""
    torch.manual_seed(0)
    tiny = LlamaForCausalLM(LlamaConfig(**config)).eval()
    for p in tiny.parameters():  # norms start at 1: perturb so a wrong loader shows
        p.data.add_(torch.randn_like(p) * 0.05)
    d = os.path.join(ROOT, "tests/fixtures", name)
    tiny.save_pretrained(d, safe_serialization=True)
    with torch.no_grad():
        logits = tiny(torch.tensor(ids)).logits
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump({"ids": ids, "logits": logits.reshape(-1).tolist()}, f)


def tiny_llama3():
    # Llama 3's shape of config: a head wider than hidden/heads, a large rope_theta and the
    # llama3 frequency scaling, its bands placed so that a 16-wide head has frequencies kept,
    # interpolated and divided; 40 positions so that slow frequencies matter.
    ids = [[(7 * i + 3) % 96 for i in range(40)], [(11 * i + 5) % 96 for i in range(40)]]
    tiny_checkpoint("tiny-llama3", ids, vocab_size=96, hidden_size=32, intermediate_size=56,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    rms_norm_eps=1e-5, max_position_embeddings=256, tie_word_embeddings=False,
                    rope_theta=500000.0,
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64})


def main():
    if sys.argv[1:] == ["tiny-llama3"]:
        return tiny_llama3()
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF)
    # The GGUF's `tokenizer.ggml.pre` is "smollm": llama.cpp's name for SmolLM's pre-tokenizer,
    # digits split one by one, then GPT-2's regex on each piece (Hugging Face: a Sequence of
    # Digits(individual_digits) and ByteLevel). transformers' GGUF converter keeps only the
    # ByteLevel step, which differs where a whitespace run meets a digit ("5  6"): put it back.
    from tokenizers import pre_tokenizers
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    if sys.argv[1:] != ["tokenizer"]:
        chat_goldens(tok)
    if sys.argv[1:] == ["chat"]:
        return 0
    cases = [{"text": s, "ids": tok(s, add_special_tokens=False).input_ids} for s in TOKENIZER_CASES]
    with open(os.path.join(ROOT, "tests/golden/tokenizer.json"), "w") as f:
        json.dump({"source": "transformers AutoTokenizer(gguf_file=%s)" % GGUF, "cases": cases}, f, indent=1, ensure_ascii=False)
    tok.save_pretrained("/tmp/scaleot-hf-tok")
    with open("/tmp/scaleot-hf-tok/tokenizer.json", "rb") as src, open(
        os.path.join(ROOT, "tests/fixtures/smollm2-tokenizer.json.gz"), "wb"
    ) as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as dst:
        dst.write(src.read())
    if sys.argv[1:] == ["tokenizer"]:
        return 0

    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=GGUF, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for p in LOGIT_PROMPTS:
            ids = tok(p, add_special_tokens=False).input_ids
            logits = model(torch.tensor([ids])).logits[0]
            lp = torch.log_softmax(logits, -1)
            token_lp = [lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
            top = torch.topk(lp[-1], 5)
            gen = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0][len(ids):].tolist()
            out.append({
                "prompt": p, "ids": ids, "token_logprobs": token_lp,
                "last_top5": [[int(i), float(v)] for v, i in zip(top.values, top.indices)],
                "last_logits_head": [float(x) for x in logits[-1, :16]],
                "greedy_ids": gen, "greedy_text": tok.decode(gen),
            })
    with open(os.path.join(ROOT, "tests/golden/logits.json"), "w") as f:
        json.dump({"source": "transformers %s, %s dequantized to float32" % (__import__("transformers").__version__, GGUF),
                   "cases": out}, f, indent=1, ensure_ascii=False)

    # A tiny checkpoint in Hugging Face's own format, written by transformers itself.
    tiny_checkpoint("tiny-llama", [[1, 5, 9, 33, 77, 2, 64, 10], [3, 3, 95, 0, 18, 41, 7, 60]],
                    vocab_size=96, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5,
                    max_position_embeddings=64, tie_word_embeddings=False)
    tiny_llama3()
    print("goldens written")


if __name__ == "__main__":
    sys.exit(main())
