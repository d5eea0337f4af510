"""PyTorch peer for `scaleot bench-train`: the same adapter training step on the same emulator
(layers kept per the emulator manifest's plan, only adapter layers trainable, or with
--lora-rank PEFT's LoRA on their projections; AdamW, loss on every token), same batch, same
threads. Prints one JSON line."""
import argparse, json, os, time

import torch
from transformers import AutoModelForCausalLM

from peer_common import peak_rss_mib, pseudo_text

p = argparse.ArgumentParser()
p.add_argument("--model-dir", required=True)
p.add_argument("--gguf", default="SmolLM2-135M-Instruct.Q4_1.gguf")
p.add_argument("--emulator", required=True, help="emulator manifest (.json)")
p.add_argument("--batch", type=int, default=8)
p.add_argument("--len", type=int, default=128)
p.add_argument("--iters", type=int, default=5)
p.add_argument("--threads", type=int, default=os.cpu_count())
p.add_argument("--lora-rank", type=int, default=0,
               help="PEFT LoRA of this rank (alpha 2r) on every projection of the adapter layers")
p.add_argument("--profile", action="store_true",
               help="instead: where one step's time goes (torch.profiler), as JSON shares per category")
a = p.parse_args()
torch.set_num_threads(a.threads)
plan = json.load(open(a.emulator))["plan"]
model = AutoModelForCausalLM.from_pretrained(a.model_dir, gguf_file=a.gguf, dtype=torch.float32)
layers = model.model.layers
keep = [i for i, k in enumerate(plan) if k != "dropped"]
model.model.layers = torch.nn.ModuleList([layers[i] for i in keep])
model.config.num_hidden_layers = len(keep)
for i, layer in enumerate(model.model.layers):
    layer.self_attn.layer_idx = i
for prm in model.parameters():
    prm.requires_grad_(False)
adapters = [pos for pos, i in enumerate(keep) if plan[i] == "adapter"]
if a.lora_rank:
    from peft import LoraConfig, get_peft_model
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=a.lora_rank, lora_alpha=2 * a.lora_rank, lora_dropout=0.0,
                                             target_modules=targets, layers_to_transform=adapters))
    trains = "PEFT %s LoRA r=%d alpha=%d on all projections" % (__import__("peft").__version__, a.lora_rank, 2 * a.lora_rank)
else:
    for pos in adapters:
        for prm in model.model.layers[pos].parameters():
            prm.requires_grad_(True)
    trains = "whole adapter layers"
model.train()
opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-5, weight_decay=0.0)
vocab = model.config.vocab_size
ids = torch.tensor(pseudo_text(a.batch, a.len, vocab))

def step():
    out = model(ids, labels=ids)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return out.loss.item()

step()
if a.profile:
    from profile_categories import torch_step_profile
    print(json.dumps(torch_step_profile(step, vocab)))
    raise SystemExit
start = time.perf_counter()
for _ in range(a.iters):
    loss = step()
secs = (time.perf_counter() - start) / a.iters
peak = peak_rss_mib()
print(json.dumps({"impl": "pytorch %s eager f32" % torch.__version__, "trains": trains, "batch": a.batch, "len": a.len,
                  "iters": a.iters, "seconds_per_step": secs, "tokens_per_second": a.batch * a.len / secs,
                  "peak_rss_mib": peak, "threads": a.threads, "loss": loss}))
