#!/usr/bin/env bash
# Full zero-shot validation sets with `scaleot eval`, compared with lm-evaluation-harness on
# the same dequantized weights (tests/golden/lm_eval_reference.json). Fails if acc or acc_norm
# differs by more than 1.0 point (measured: they agree to the reported digits).
#   bash tools/reference/eval_parity.sh [TASKS (default arc_easy,piqa,copa)] [OUT.json]
# CI runs the default (ARC-Easy 570, PIQA 1,838, COPA 100 docs: several minutes on 2 cores);
# winogrande (1,267 docs, about 4 more minutes) has its reference figures too.
set -euo pipefail
cd "$(dirname "$0")/../.."
tasks=${1:-arc_easy,piqa,copa}
out=${2:-target/eval-parity.json}
target/release/scaleot eval --tasks "$tasks" --json > "$out"
python3 - "$out" tests/golden/lm_eval_reference.json <<'PY'
import json, sys
ours = {r["task"]: r for r in json.load(open(sys.argv[1]))}
ref = json.load(open(sys.argv[2]))["tasks"]
bad = False
print(f"{'task':10} {'metric':9} {'scaleot':>8} {'lm-eval':>8} {'diff':>7}")
for task, o in ours.items():
    r = ref[task]
    assert o["docs"] == r["docs"], (task, o["docs"], r["docs"])
    # lm-eval reports only acc for some tasks (WinoGrande, COPA).
    for m in [m for m in ("acc", "acc_norm") if r.get(m) is not None]:
        d = 100 * (o[m]["value"] - r[m])
        bad |= abs(d) > 1.0
        print(f"{task:10} {m:9} {o[m]['value']:8.4f} {r[m]:8.4f} {d:+6.2f}pt")
sys.exit("parity FAILED: more than 1.0 point off" if bad else 0)
PY
