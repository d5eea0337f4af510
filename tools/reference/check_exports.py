"""What `scaleot plugin` writes, loaded by the tools its users run: transformers, PEFT, gguf.

Test tooling only. Builds, with the release binary on the real SmolLM2-135M:
  * an emulator and two adapters on it (whole layers; LoRA on chat data), on the GGUF base;
  * the same on a Hugging Face (safetensors) base: the first plug-in's folder;
  * every adapter plugged in with `plugin --out DIR --gguf FILE` (and `--peft DIR` for LoRA),
    one adapter through the single file the page saves;
then checks, for each output:
  * HF folder: AutoTokenizer / AutoModelForCausalLM load it with no unexpected, missing or
    mismatched keys and nothing logged; pipeline("text-generation") and apply_chat_template
    work; the tokenizer gives the golden ids; greedy tokens equal `scaleot generate --json`
    and per-token log-probs equal `scaleot score --json` on the same folder (1e-4);
  * PEFT folder: PeftModel.from_pretrained(base, DIR) on the full base (transformers) gives
    the merged plug-in's log-probs (1e-4);
  * GGUF: the gguf package reads the base's tensor names, shapes and metadata back;
    transformers loads it (gguf_file=) with our own reader's log-probs (1e-4), and both stay
    within the precision's tolerance of the f32 folder.
Prints every measured difference. Exits 1 on the first failure.

Usage: bash tools/reference/setup-venv.sh && .venv-ref/bin/python tools/reference/check_exports.py [WORKDIR]
"""
import io, json, logging, os, subprocess, sys, warnings

os.environ["TQDM_DISABLE"] = "1"  # transformers' GGUF reader shows a progress bar

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "scaleot")
BASE_GGUF = os.path.join(ROOT, "assets", "model", "SmolLM2-135M-Instruct.Q4_1.gguf")
WORK = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "export-check"))
PROMPT = "The capital of France is"
CONTEXT = "Question: Which gas do plants take in from the air?\nAnswer:"
CONTINUATION = " Plants take in carbon dioxide and give off oxygen."
TOL = 1e-4
# Per-token log-prob distance a GGUF may keep from the f32 folder (its rounding of weights).
PRECISION_TOL = {"f16": 0.05, "q8_0": 0.25}
torch.set_num_threads(2)
transformers.logging.set_verbosity_warning()
transformers.logging.disable_progress_bar()
LOG = io.StringIO()
transformers.logging.get_logger().addHandler(logging.StreamHandler(LOG))


def fail(msg):
    sys.exit(f"check_exports FAILED: {msg}")


def scaleot(*args):
    out = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, cwd=WORK)
    if out.returncode != 0:
        fail(f"scaleot {' '.join(map(str, args))}:\n{out.stderr}")
    return out.stdout


def scaleot_json(*args):
    return json.loads(scaleot(*args).strip().splitlines()[-1])


def quietly(what, load):
    """Runs `load`, failing if transformers logged or warned anything (unknown or missing keys)."""
    LOG.seek(0), LOG.truncate()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Deprecation notices between the libraries themselves say nothing about our files.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        result = load()
    said = LOG.getvalue().strip() + "".join(f"\n{w.category.__name__}: {w.message}" for w in caught)
    if said.strip():
        fail(f"{what} was not loaded cleanly:\n{said}")
    return result


def load_hf(folder):
    tok = quietly(f"AutoTokenizer({folder})", lambda: AutoTokenizer.from_pretrained(folder))
    model, info = quietly(
        f"AutoModelForCausalLM({folder})",
        lambda: AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True),
    )
    bad = {k: v for k, v in info.items() if v}
    if bad:
        fail(f"{folder}: loading info {bad}")
    return tok, model.eval()


def token_logprobs(model, context_ids, continuation_ids):
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    n = len(context_ids)
    return np.array([logp[n - 1 + i, t].item() for i, t in enumerate(continuation_ids)])


def ours(model_path):
    """Greedy ids and per-token log-probs from our own binary."""
    gen = scaleot_json("generate", PROMPT, "--model", model_path, "--max-tokens", 12, "--json")
    score = scaleot_json("score", CONTEXT, CONTINUATION, "--model", model_path, "--json")
    return gen, score


def check_hf_folder(folder, golden_ids):
    tok, model = load_hf(folder)
    for case in golden_ids:
        got = tok(case["text"], add_special_tokens=True)["input_ids"]
        if got != case["ids"]:
            fail(f"{folder}: AutoTokenizer({case['text']!r}) = {got}, golden {case['ids']}")
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    if "<|im_start|>user\nHi<|im_end|>" not in chat or not chat.endswith("<|im_start|>assistant\n"):
        fail(f"{folder}: apply_chat_template gave {chat!r}")
    text = quietly("pipeline", lambda: pipeline("text-generation", model=model, tokenizer=tok)(
        PROMPT, max_new_tokens=4, do_sample=False))[0]["generated_text"]
    if not text.startswith(PROMPT):
        fail(f"{folder}: pipeline gave {text!r}")
    gen, score = ours(folder)
    if tok(PROMPT)["input_ids"] != gen["prompt_ids"]:
        fail(f"{folder}: prompt ids differ: {tok(PROMPT)['input_ids']} vs {gen['prompt_ids']}")
    with torch.no_grad():
        hf_gen = model.generate(torch.tensor([gen["prompt_ids"]]), max_new_tokens=12, do_sample=False,
                                pad_token_id=tok.pad_token_id)[0, len(gen["prompt_ids"]):].tolist()
    if hf_gen != gen["ids"][: len(hf_gen)] or len(hf_gen) != len(gen["ids"]):
        fail(f"{folder}: greedy tokens differ: transformers {hf_gen}, scaleot {gen['ids']}")
    if tok(CONTEXT + CONTINUATION)["input_ids"] != score["context_ids"] + score["continuation_ids"]:
        fail(f"{folder}: scored token ids differ from AutoTokenizer's")
    theirs = token_logprobs(model, score["context_ids"], score["continuation_ids"])
    diff = np.abs(theirs - np.array(score["token_logprobs"])).max()
    print(f"  {os.path.basename(folder):24} HF folder: greedy {len(hf_gen)} tokens equal; "
          f"log-probs max |diff| {diff:.2e} over {len(theirs)} tokens")
    if diff > TOL:
        fail(f"{folder}: per-token log-probs differ by {diff:.2e} (> {TOL})")
    return model, score


def check_peft(peft_dir, base_loader, merged_model, score):
    from peft import PeftModel
    base = base_loader()
    model = quietly(f"PeftModel({peft_dir})", lambda: PeftModel.from_pretrained(base, peft_dir)).eval()
    ctx, cont = score["context_ids"], score["continuation_ids"]
    diff = np.abs(token_logprobs(model, ctx, cont) - token_logprobs(merged_model, ctx, cont)).max()
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logit_diff = (model(ids).logits - merged_model(ids).logits).abs().max().item()
    print(f"  {os.path.basename(peft_dir):24} PEFT on the full base vs merged plug-in: log-probs "
          f"max |diff| {diff:.2e}, logits {logit_diff:.2e}")
    if diff > TOL:
        fail(f"{peft_dir}: PEFT log-probs differ from the merged plug-in by {diff:.2e}")


def check_gguf(path, precision, base_path, folder_score):
    import gguf
    # Every base here is SmolLM2's GGUF or a folder made from it: the same names, shapes,
    # hyper-parameters and tokenizer.
    r, base = gguf.GGUFReader(path), gguf.GGUFReader(BASE_GGUF)
    got = {t.name: list(t.shape) for t in r.tensors}
    want = {t.name: list(t.shape) for t in base.tensors}
    if got != want:
        fail(f"{path}: tensors differ from the base's: {sorted(set(got) ^ set(want))[:6]}")
    # A byte-level BPE never emits an unknown token: we keep no unknown-token id, so a GGUF
    # written from a Hugging Face folder has none (one written from a GGUF keeps the base's).
    optional = {"tokenizer.ggml.unknown_token_id"} if not base_path.endswith(".gguf") else set()
    differ = [k for k in base.fields if k.startswith(("tokenizer.", "llama.")) and k not in optional and
              (k not in r.fields or base.fields[k].contents() != r.fields[k].contents())]
    if differ:
        fail(f"{path}: metadata {differ} differs from the base's")
    want_type = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[precision]
    types = {t.name: t.tensor_type for t in r.tensors}
    if types["blk.0.attn_q.weight"] != want_type or types["blk.0.attn_norm.weight"] != gguf.GGMLQuantizationType.F32:
        fail(f"{path}: tensor types {types['blk.0.attn_q.weight']}, {types['blk.0.attn_norm.weight']}")
    if "{% for message in messages %}" not in r.fields["tokenizer.chat_template"].contents():
        fail(f"{path}: no chat template")
    # Our encoder against gguf's reference quantizer, byte for byte, on the f32 folder's weights.
    from safetensors.numpy import load_file
    folder_weights = load_file(path[: -len(".gguf")] + ".out/model.safetensors")
    for hf_name, gguf_name in [("model.layers.3.mlp.down_proj.weight", "blk.3.ffn_down.weight"),
                               ("model.layers.29.self_attn.v_proj.weight", "blk.29.attn_v.weight")]:
        want = gguf.quants.quantize(folder_weights[hf_name], want_type)
        got = next(t for t in r.tensors if t.name == gguf_name).data
        if want.tobytes() != np.asarray(got).tobytes():
            fail(f"{path}: {gguf_name} is not what gguf's own {precision} quantizer writes")
    _, score = ours(path)
    d, name = os.path.dirname(path), os.path.basename(path)
    model = quietly(f"AutoModelForCausalLM(gguf_file={name})", lambda: AutoModelForCausalLM.from_pretrained(
        d, gguf_file=name, dtype=torch.float32)).eval()
    theirs = token_logprobs(model, score["context_ids"], score["continuation_ids"])
    diff = np.abs(theirs - np.array(score["token_logprobs"])).max()
    drifts = np.abs(np.array(score["token_logprobs"]) - np.array(folder_score["token_logprobs"]))
    drift = drifts.max()
    print(f"  {name:24} GGUF {precision}: {len(r.tensors)} tensors, {len(r.fields)} metadata keys; "
          f"transformers vs scaleot log-probs max |diff| {diff:.2e}; vs the f32 folder {drift:.2e}")
    if diff > TOL:
        fail(f"{path}: transformers and scaleot read different models ({diff:.2e})")
    if drift > PRECISION_TOL[precision]:
        fail(f"{path}: {precision} moved log-probs by {drift:.2e} (> {PRECISION_TOL[precision]})")


def make_adapters(base, tag):
    """An emulator of `base` and two adapters tuned on it: whole layers and LoRA."""
    emu = f"{tag}-emu.json"
    scaleot("emulator", "--model", base, "--adapters", "2+2", "--keep", 13, "--out", emu)
    common = ["--emulator", emu, "--steps", 2, "--batch-size", 2]
    scaleot("finetune", *common, "--data", "arc_easy.jsonl", "--held-out", 0.01, "--out", f"{tag}-layers.json")
    # On the GGUF base, the LoRA adapter as the single file the page saves (manifest inside).
    lora = f"{tag}-lora." + ("safetensors" if tag == "gguf" else "json")
    scaleot("finetune", *common, "--data", os.path.join(ROOT, "tests/fixtures/chat-sample.jsonl"),
            "--held-out", 0.2, "--lora-rank", 4, "--lr", 1e-2, "--out", lora)
    return f"{tag}-layers.json", lora


def main():
    os.makedirs(WORK, exist_ok=True)
    golden = json.load(open(os.path.join(ROOT, "tests/golden/tokenizer.json")))["cases"]
    scaleot("task-data", "--task", "arc_easy", "--out", "arc_easy.jsonl")
    gguf_dir, gguf_name = os.path.dirname(BASE_GGUF), os.path.basename(BASE_GGUF)
    # The Hugging Face base: the GGUF base's first plug-in, a full safetensors folder.
    hf_base = os.path.join(WORK, "gguf-layers.out")
    bases = {
        "gguf": (BASE_GGUF, lambda: AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=gguf_name, dtype=torch.float32)),
        "hf": (hf_base, lambda: AutoModelForCausalLM.from_pretrained(hf_base, dtype=torch.float32)),
    }
    for tag, (base, base_loader) in bases.items():
        print(f"{tag} base: {base}")
        layers, lora = make_adapters(base, tag)
        for adapter, precision in [(layers, "q8_0"), (lora, "f16")]:
            stem, is_lora = os.path.splitext(adapter)[0], adapter == lora
            outs = ["--out", f"{stem}.out", "--gguf", f"{stem}.gguf", "--gguf-type", precision]
            if is_lora:
                outs += ["--peft", f"{stem}.peft"]
            scaleot("plugin", "--model", base, "--adapter", adapter, *outs)
            merged, score = check_hf_folder(os.path.join(WORK, f"{stem}.out"), golden)
            if is_lora:
                check_peft(os.path.join(WORK, f"{stem}.peft"), base_loader, merged, score)
            check_gguf(os.path.join(WORK, f"{stem}.gguf"), precision, base, score)
    print("check_exports: every export loads in transformers, PEFT and gguf and agrees with scaleot")


if __name__ == "__main__":
    main()
