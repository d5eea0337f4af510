"""PyTorch peer for `scaleot bench`: the same forward pass (same GGUF weights dequantized to
float32, same token ids, same batch x length, same thread count). Prints one JSON line."""
import argparse, json, os, time

import torch
from transformers import AutoModelForCausalLM

from peer_common import peak_rss_mib, pseudo_text

p = argparse.ArgumentParser()
p.add_argument("--model-dir", required=True)
p.add_argument("--gguf", default="SmolLM2-135M-Instruct.Q4_1.gguf")
p.add_argument("--batch", type=int, default=4)
p.add_argument("--len", type=int, default=128)
p.add_argument("--iters", type=int, default=5)
p.add_argument("--threads", type=int, default=os.cpu_count())
a = p.parse_args()
torch.set_num_threads(a.threads)
model = AutoModelForCausalLM.from_pretrained(a.model_dir, gguf_file=a.gguf, dtype=torch.float32).eval()
vocab = model.config.vocab_size
ids = torch.tensor(pseudo_text(a.batch, a.len, vocab))
with torch.inference_mode():
    model(ids)
    start = time.perf_counter()
    checksum = 0.0
    for _ in range(a.iters):
        checksum += model(ids).logits.sum().item()
    secs = (time.perf_counter() - start) / a.iters
peak = peak_rss_mib()
print(json.dumps({"impl": "pytorch %s eager f32" % torch.__version__, "batch": a.batch, "len": a.len,
                  "iters": a.iters, "seconds_per_forward": secs, "tokens_per_second": a.batch * a.len / secs,
                  "peak_rss_mib": peak, "threads": a.threads, "checksum": checksum}))
