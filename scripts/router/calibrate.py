"""Recalibrate the mode thresholds of a router model on a deployment's own traffic.

The thresholds of `auto:cheap|balanced|quality` come from the score quantiles in the model file,
measured on the training prompts. Traffic that looks different (chat, long documents) gets other
strong shares. This replaces the quantiles with those of the scores of a traffic sample, keeping
the weights (so the golden file stays valid):

    target/release/tollgate router score --model conf/router/complexity-v2.json < sample.jsonl > scores.jsonl
    python3 scripts/router/calibrate.py conf/router/complexity-v2.json scores.jsonl \
        --version complexity-v2-acme > conf/router/complexity-v2-acme.json

Standard library only. Lines of scores.jsonl with an "error" are skipped.
"""

import argparse
import json
import sys


def quantiles(xs, n=101):
    """Linear-interpolated quantiles at 0, 1/(n-1), ..., 1 (numpy's default method)."""
    xs = sorted(xs)
    out = []
    for k in range(n):
        p = k / (n - 1) * (len(xs) - 1)
        lo = int(p)
        hi = min(lo + 1, len(xs) - 1)
        out.append(xs[lo] + (xs[hi] - xs[lo]) * (p - lo))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("scores", help="output of `tollgate router score` (JSON lines)")
    ap.add_argument("--version", required=True, help="version string of the new model file")
    ap.add_argument("--min-samples", type=int, default=1000)
    args = ap.parse_args()
    with open(args.model, encoding="utf-8") as f:
        model = json.load(f)
    scores = []
    with open(args.scores, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            v = json.loads(line)
            if isinstance(v.get("score"), (int, float)):
                scores.append(float(v["score"]))
    if len(scores) < args.min_samples:
        sys.exit(f"only {len(scores)} scores; need at least {args.min_samples} (--min-samples)")
    model["quantiles"] = [float(f"{q:.6g}") for q in quantiles(scores)]
    model["version"] = args.version
    model.setdefault("training", {})["quantile_reference"] = (
        f"recalibrated on {len(scores)} scores from {args.scores}"
    )
    json.dump(model, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
