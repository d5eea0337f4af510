#!/usr/bin/env bash
# Full zero-shot ARC-Easy (570 docs) and PIQA (1838 docs) with `scaleot eval`, compared with
# lm-evaluation-harness on the same dequantized weights (tests/golden/lm_eval_reference.json).
# Fails if acc or acc_norm differs by more than 1.0 point. Takes several minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/eval-parity.json}
target/release/scaleot eval --tasks arc_easy,piqa --json > "$out"
python3 - "$out" tests/golden/lm_eval_reference.json <<'PY'
import json, sys
ours = {r["task"]: r for r in json.load(open(sys.argv[1]))}
ref = json.load(open(sys.argv[2]))["tasks"]
bad = False
print(f"{'task':10} {'metric':9} {'scaleot':>8} {'lm-eval':>8} {'diff':>7}")
for task, r in ref.items():
    o = ours[task]
    assert o["docs"] == r["docs"], (task, o["docs"], r["docs"])
    for m in ("acc", "acc_norm"):
        d = 100 * (o[m]["value"] - r[m])
        bad |= abs(d) > 1.0
        print(f"{task:10} {m:9} {o[m]['value']:8.4f} {r[m]:8.4f} {d:+6.2f}pt")
sys.exit("parity FAILED: more than 1.0 point off" if bad else 0)
PY
