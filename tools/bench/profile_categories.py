"""Where a training step's time goes, in the same categories for scaleot (a `perf script` of
`scaleot bench-train`, call stacks included) and for PyTorch (torch.profiler of the same step).
Used by tools/bench/profile_step.sh; run at one thread, where every sample has its callers."""
import collections, json, sys

CATEGORIES = [
    "head + cross-entropy",
    "weight products (projections, LoRA)",
    "attention (scores, softmax, weighted sum)",
    "element-wise (SiLU gate, norms, rotary, residuals)",
    "optimizer (AdamW)",
    "allocation and page faults",
    "other",
]
HEAD, PRODUCTS, ATTENTION, ELEMENTWISE, OPTIMIZER, MEMORY, OTHER = CATEGORIES


def torch_step_profile(step, vocab):
    """Self CPU time of every op in one `step()`, by category (seconds) and the step's wall time."""
    import time
    import torch
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        step()
        wall = time.perf_counter() - start
    seconds = collections.Counter()
    for e in prof.events():
        if e.self_cpu_time_total <= 0:
            continue
        chain = []
        node = e
        while node is not None:
            chain.append(node.name.lower())
            node = node.cpu_parent
        text = " | ".join(chain)
        shapes = [d for s in (e.input_shapes or []) for d in (s if isinstance(s, (list, tuple)) else [])]
        product = e.name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm")
        if "optimizer.step" in text:
            cat = OPTIMIZER
        elif "nll" in text or "log_softmax" in text or "logsoftmax" in text or "cross_entropy" in text \
                or (product and vocab in shapes):
            cat = HEAD
        elif "scaled_dot_product" in text or "softmax" in text or (e.name in ("aten::bmm", "aten::baddbmm")):
            cat = ATTENTION
        elif product:
            cat = PRODUCTS
        elif "embedding" in text:
            cat = OTHER
        else:
            cat = ELEMENTWISE
        seconds[cat] += e.self_cpu_time_total / 1e6
    return {"impl": "pytorch %s" % torch.__version__, "wall_seconds": wall, "seconds": dict(seconds)}


def perf_step_profile(script, sample_hz):
    """Samples of a `perf script -F tid,ip,sym` of one bench-train run, by category (seconds),
    leaving out loading and start-up."""
    samples, current = [], None
    for line in open(script):
        if not line.strip():
            continue
        if not line.startswith("\t"):
            current = (int(line.split()[0]), [])
            samples.append(current)
            continue
        parts = line.strip().split(None, 1)
        current[1].append(parts[1] if len(parts) > 1 else "?")
    main = min(t for t, _ in samples)
    seconds = collections.Counter()
    for tid, stack in samples:
        text = " | ".join(stack)
        leaf = stack[0] if stack else ""
        if "model_files" in text or "Emulator::load" in text or "load_emulator" in text:
            continue
        if tid != main:
            # rayon's pool: burn's batched products (the attention's, LoRA's) run there whole.
            cat = ATTENTION if "gemm" in text else ELEMENTWISE
        elif "scaleot::optim::" in text:
            cat = OPTIMIZER
        elif "head_loss" in text:
            cat = HEAD
        elif "FlexTensor::empty" in text or any(k in leaf for k in (
                "page_fault", "clear_page", "do_anonymous_page", "_int_malloc", "_int_free",
                "handle_mm_fault", "__alloc_pages", "get_page_from_freelist", "malloc", "munmap")):
            cat = MEMORY
        elif "LeanAttention" in text or "lean_attention" in text:
            # our attention operation, its products included
            cat = ATTENTION
        elif any(k in text for k in ("rotary", "rms_norm", "RmsNorm", "swiglu", "SwiGlu")):
            cat = ELEMENTWISE
        elif "cpu_kernels::product" in text:
            # also the q, k, v and o projections, which run inside `Attention::forward`
            cat = PRODUCTS
        elif "attention" in text.lower() or "Attend" in text:
            cat = ATTENTION
        elif "gemm" in text:
            cat = PRODUCTS
        elif "bench_train" in text:
            cat = ELEMENTWISE
        else:
            cat = OTHER
        seconds[cat] += 1.0 / sample_hz
    return {"impl": "scaleot", "seconds": dict(seconds)}


if __name__ == "__main__":
    script, hz, steps = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    profile = perf_step_profile(script, hz)
    profile["seconds"] = {k: v / steps for k, v in profile["seconds"].items()}
    print(json.dumps(profile))
