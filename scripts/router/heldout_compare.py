"""Issue 19, third round: candidates against complexity-v2 and prompt length on train.py's
held-out sources, with paired bootstrap intervals (the same 200 seeded resamples of the prompts
for every scorer, so differences are paired).

    .venv/bin/python scripts/router/heldout_compare.py NAME=MODEL.json[+BLEND] ...

`+BLEND` adds BLEND to the file's log_bytes dense weight (blend.py). Printed per source: APGR
with its 95% interval for complexity-v2, each candidate, prompt length and random (mean of 50
tie orders), and per candidate the paired difference to v2 and to length (mean, 95% interval,
share of resamples > 0). Also the paired standard deviation of (v2 - length): the margin a
router would need to be "clearly" (97.5% one-sided) above length on that source.
"""

import json
import os
import sys

import numpy as np

import synth  # noqa: F401  (train.py imports it lazily; keep the path set-up identical)
import train as T

REPS = 200


def typed_scorer(model, avec):
    """complexity-v2's logit + a[task type] x standardised log_bytes (blend.py's three types)."""
    import blend

    m0, s0 = model["dense_mean"][0], model["dense_scale"][0]

    def score(reqs):
        p = np.clip(T.model_scores(model, reqs), 1e-12, 1 - 1e-12)
        z = np.log(p / (1 - p))
        dense = np.array([T.F.extract(r, model["features"])[2] for r in reqs])
        return z + np.asarray(avec)[blend.task_type(dense)] * (dense[:, 0] - m0) / s0

    return score


def load(spec):
    name, _, path = spec.partition("=")
    if path.startswith("typed:"):
        with open(os.path.join(T.ROOT, "conf", "router", "complexity-v2.json"), encoding="utf-8") as f:
            return name, typed_scorer(json.load(f), [float(x) for x in path[len("typed:"):].split(",")])
    blend = 0.0
    if "+" in os.path.basename(path):
        path, _, b = path.rpartition("+")
        blend = float(b)
    with open(path, encoding="utf-8") as f:
        m = json.load(f)
    m["dense_weights"][0] += blend
    return name, m


def main():
    cands = [load(a) for a in sys.argv[1:]]
    base = load("complexity-v2=" + os.path.join(T.ROOT, "conf", "router", "complexity-v2.json"))
    rl = T.load_rows(T.DATA)
    many = T.load_many()
    open_rows = T.load_open()
    held = T.split(rl, many, open_rows)[1]
    parts = list(held.items())
    for name, part in held.items():
        kept = [r for r in part if r.get("subject") not in T.LABEL_ARTIFACT_SUBJECTS]
        if len(kept) < len(part):
            parts.append((name + " without high_school_mathematics", kept))
    print("| source | n | complexity-v2 | " + " | ".join(n for n, _ in cands)
          + " | prompt length | random | paired sd (v2 - length) |")
    print("|---|---:|" + "---|" * (len(cands) + 2) + "---:|---:|")
    diffs = []
    for name, part in parts:
        reqs = [T.req_of(r["prompt"]) for r in part]
        wk = np.array([T.pair(r)[0] for r in part])
        st = np.array([T.pair(r)[1] for r in part])
        scorers = [T.model_scores(base[1], reqs)] + [m(reqs) if callable(m) else T.model_scores(m, reqs) for _, m in cands]
        ln = T.length_scores(reqs).astype(float)
        rng = np.random.default_rng(T.SEED)
        boot = np.zeros((REPS, len(scorers) + 1))
        for i in range(REPS):
            idx = rng.integers(0, len(part), len(part))
            for j, sc in enumerate(scorers + [ln]):
                boot[i, j] = T.metrics(sc[idx], wk[idx], st[idx])["apgr"]
        point = [T.metrics(sc, wk, st)["apgr"] for sc in scorers + [ln]]
        rnd = T.random_metrics(wk, st)["apgr"]
        cell = lambda j: f"{point[j]:.3f} ({np.quantile(boot[:, j], 0.025):.3f}-{np.quantile(boot[:, j], 0.975):.3f})"  # noqa: E731
        print(f"| {name} | {len(part)} | " + " | ".join(cell(j) for j in range(len(scorers) + 1))
              + f" | {rnd:.3f} | {np.std(boot[:, 0] - boot[:, -1]):.3f} |", flush=True)
        for j, (cn, _) in enumerate(cands, start=1):
            for ref, k in (("complexity-v2", 0), ("length", len(scorers))):
                d = boot[:, j] - boot[:, k]
                diffs.append(f"| {name} | {cn} - {ref} | {point[j] - point[k]:+.3f} | "
                             f"{np.quantile(d, 0.025):+.3f} to {np.quantile(d, 0.975):+.3f} | {(d > 0).mean()*100:.1f}% |")
    print("\n| source | difference | APGR | 95% interval (paired) | resamples > 0 |\n|---|---|---:|---|---:|")
    print("\n".join(diffs))


if __name__ == "__main__":
    sys.exit(main())
