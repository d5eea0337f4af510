"""Golden dequantization of random ggml blocks by gguf-py (llama.cpp's own Python reference),
for every block type the Rust reader supports. Writes tests/golden/quant_blocks.json."""
import json, os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
rng = np.random.default_rng(0)
BLOCK = {T.Q4_0: 18, T.Q4_1: 20, T.Q5_0: 22, T.Q5_1: 24, T.Q8_0: 34, T.Q4_K: 144, T.Q6_K: 210}
PER = {T.Q4_0: 32, T.Q4_1: 32, T.Q5_0: 32, T.Q5_1: 32, T.Q8_0: 32, T.Q4_K: 256, T.Q6_K: 256}
out = []
for ty, nbytes in BLOCK.items():
    raw = rng.integers(0, 256, size=2 * nbytes, dtype=np.uint8)
    # Keep the f16 scales finite and modest: overwrite them with real small f16 values.
    scale_offsets = {T.Q4_K: [0, 2], T.Q6_K: [208]}.get(ty, [0, 2] if ty in (T.Q4_1, T.Q5_1) else [0])
    for b in range(2):
        for off in scale_offsets:
            raw[b * nbytes + off: b * nbytes + off + 2] = np.frombuffer(
                np.float16(rng.uniform(-0.1, 0.1)).tobytes(), dtype=np.uint8)
    values = dequantize(raw, ty).reshape(-1)
    assert values.size == 2 * PER[ty]
    out.append({"type": ty.name, "bytes": raw.tolist(), "values": [float(v) for v in values]})
with open(os.path.join(ROOT, "tests/golden/quant_blocks.json"), "w") as f:
    json.dump({"source": "gguf-py gguf.quants.dequantize", "cases": out}, f)
print("quant goldens written")
