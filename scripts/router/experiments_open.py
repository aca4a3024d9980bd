"""Model selection for router v3 on open-ended prompts (issue 19), training split only: the
held-out AlpacaEval subset (oasst), the Chatbot Arena prompts and every other held-out source
of train.py are never read here.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/router/experiments_open.py [--only NAME ...]

Folds: each of the four training AlpacaEval subsets (helpful_base, koala, selfinstruct, vicuna)
in turn is left out; a model is fitted on everything else of train.py's training set (MMLU-Pro,
MMLU, GSM8K, hand-written chat and Chinese prompts, the other three subsets) and scores the
left-out subset. Printed per configuration: APGR of the arena-like pair (gpt-4-1106-preview vs
Mixtral-8x7B, judge's win probability against the gpt-4-1106-preview answer) per left-out
subset and pooled, the Spearman correlation of the score with the panel difficulty, and the same
for the prompt length.
"""

import argparse
import sys

import numpy as np

import experiments as E
import synth
import train as T

SUBSETS = ["helpful_base", "koala", "selfinstruct", "vicuna"]

def add_rarity_features():
    """Experiment only (needs the `wordfreq` package, not in requirements.txt): three more dense
    features from English Zipf word frequencies (mean, mean of the three rarest words, share of
    words under Zipf 3) on the last user message. Patches the Python feature extraction of this
    process; the gateway has no such features."""
    import math
    import re

    from wordfreq import get_frequency_dict

    fd = get_frequency_dict("en", wordlist="best")
    base = T.F.extract

    def rarity(req):
        msgs = req.get("messages") or []
        users = [m for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
        text = T.F.content_text(users[-1].get("content")) if users else ""
        toks = re.findall(r"[a-z]+", text.lower())
        if not toks:
            return [0.0, 0.0, 0.0]
        z = np.array([math.log10(fd[t]) + 9 if t in fd else 0.0 for t in toks])
        return [float(z.mean()) / 7, float(np.sort(z)[:3].mean()) / 7, float((z < 3.0).mean())]

    def extract(req, spec):
        wi, ci, d = base(req, spec)
        return wi, ci, list(d) + rarity(req)

    T.F.extract = extract
    T.F.DENSE_NAMES = list(T.F.DENSE_NAMES) + ["zipf_mean", "zipf_rarest3", "rare_share"]


CONFIGS = {
    "no AlpacaEval (v2 recipe)": {"open_weight": 0.0},
    "weight 2": {"open_weight": 2.0},
    "weight 5": {"open_weight": 5.0},
    "weight 10": {"open_weight": 10.0},
    "weight 20": {"open_weight": 20.0},
    "weight 5, spread target": {"open_weight": 5.0, "open_target": "spread"},
    "weight 10, spread target": {"open_weight": 10.0, "open_target": "spread"},
    "weight 10, chat weight 5": {"open_weight": 10.0, "chat_weight": 5.0},
    "weight 50": {"open_weight": 50.0},
    "weight 20, pair target": {"open_weight": 20.0, "open_target": "pair"},
    "weight 20, difficulty + pair": {"open_weight": 20.0, "open_target": "blend"},
    "weight 100": {"open_weight": 100.0},
    "weight 20, L2 3e-5": {"open_weight": 20.0, "l2": 3e-5},
    "weight 20, L2 3e-6": {"open_weight": 20.0, "l2": 3e-6},
    "AlpacaEval + chat only": {"open_weight": 1.0, "only_open": True},
    "AlpacaEval + chat only, L2 1e-4": {"open_weight": 1.0, "only_open": True, "l2": 1e-4},
}


def rank(a):
    return np.argsort(np.argsort(a))


def spearman(a, b):
    return float(np.corrcoef(rank(a), rank(b))[0, 1])


def in_domain(train, feats, pair):
    """10-fold random cross-validation on the training AlpacaEval prompts alone (no other data):
    how much of the panel difficulty the hashed n-gram model learns in domain."""
    rows = [dict(r, pair=pair) for r in train if r.get("source") == "alpaca_eval"]
    rng = np.random.default_rng(T.SEED)
    fold = rng.permutation(len(rows)) % 10
    wk = np.array([T.pair(r)[0] for r in rows])
    st = np.array([T.pair(r)[1] for r in rows])
    d = np.array([r["difficulty"] for r in rows])
    print("| in-domain 10-fold (AlpacaEval training prompts only) | APGR | Spearman with difficulty |")
    print("|---|---:|---:|")
    ln = T.length_scores([T.req_of(r["prompt"]) for r in rows]).astype(float)
    print(f"| prompt length | {T.metrics(ln, wk, st)['apgr']:.3f} | {spearman(ln, d):.3f} |")
    for l2 in (1e-5, 1e-4, 1e-3):
        z = np.zeros(len(rows))
        for k in range(10):
            tr = [r for r, f in zip(rows, fold) if f != k]
            te = [i for i, f in enumerate(fold) if f == k]
            X = feats.matrix([T.req_of(r["prompt"]) for r in tr])
            y = np.array([r["difficulty"] for r in tr])
            p = T.train_lr(X, y, np.ones(len(tr)), l2, 1e-3, iters=300)
            z[te] = feats.matrix([T.req_of(rows[i]["prompt"]) for i in te]).logits(*p)
        print(f"| hashed n-grams + dense, L2 {l2:g} | {T.metrics(z, wk, st)['apgr']:.3f} | {spearman(z, d):.3f} |", flush=True)
    # Learning curve: the same protocol, each training fold subsampled (L2 1e-3).
    for frac in (0.25, 0.5):
        z = np.zeros(len(rows))
        for k in range(10):
            tr = [r for r, f in zip(rows, fold) if f != k]
            tr = [tr[i] for i in sorted(rng.permutation(len(tr))[: int(len(tr) * frac)])]
            te = [i for i, f in enumerate(fold) if f == k]
            X = feats.matrix([T.req_of(r["prompt"]) for r in tr])
            y = np.array([r["difficulty"] for r in tr])
            p = T.train_lr(X, y, np.ones(len(tr)), 1e-3, 1e-3, iters=300)
            z[te] = feats.matrix([T.req_of(rows[i]["prompt"]) for i in te]).logits(*p)
        print(f"| same, L2 0.001, {frac:.0%} of each training fold | {T.metrics(z, wk, st)['apgr']:.3f} | {spearman(z, d):.3f} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--in-domain", action="store_true")
    ap.add_argument("--rarity", action="store_true", help="add the wordfreq features (experiment)")
    opts = ap.parse_args()
    if opts.rarity:
        add_rarity_features()
    rl = T.load_rows(T.DATA)
    many = T.load_many()
    open_rows = T.load_open()
    train, _, _ = T.split(rl, many, open_rows)
    chat = T.load_chat()
    chat_train = [c for c in chat if c["split"] == "train"]
    zh_train = [z for z in synth.chinese_set() if z["split"] == "train"]
    feats = T.Features(dict(T.F.DEFAULT_SPEC))
    pair = T.OPEN_PAIRS["alpaca_eval oasst (held-out subset)"]
    if opts.in_domain:
        return in_domain(train, feats, pair)
    print("| configuration | " + " | ".join(SUBSETS) + " | pooled APGR | Spearman with difficulty |")
    print("|---|" + "---:|" * (len(SUBSETS) + 2))
    lens_done = False
    for name, kw in CONFIGS.items():
        if opts.only and name not in opts.only:
            continue
        args = E.Args(**{"open_weight": 5.0, "open_target": "raw", **kw})
        apgr, sp, all_z, all_rows = [], [], [], []
        for sub in SUBSETS:
            rest = [r for r in train if not (r.get("source") == "alpaca_eval" and r["subset"] == sub)]
            if getattr(args, "only_open", False):
                rest = [r for r in rest if r.get("source") == "alpaca_eval"]
            part = [dict(r, pair=pair) for r in train if r.get("source") == "alpaca_eval" and r["subset"] == sub]
            reqs, y, sw = T.training_set(rest, chat_train, zh_train, args)
            p = T.train_lr(feats.matrix(reqs), y, sw, args.l2, args.l2_dense, iters=args.iters)
            z = feats.matrix([T.req_of(r["prompt"]) for r in part]).logits(*p)
            wk = np.array([T.pair(r)[0] for r in part])
            st = np.array([T.pair(r)[1] for r in part])
            apgr.append(T.metrics(z, wk, st)["apgr"])
            sp.append(spearman(z, [r["difficulty"] for r in part]))
            all_z += list(z - np.median(z))
            all_rows += part
        wk = np.array([T.pair(r)[0] for r in all_rows])
        st = np.array([T.pair(r)[1] for r in all_rows])
        pooled = T.metrics(np.array(all_z), wk, st)["apgr"]
        if not lens_done:
            ln = T.length_scores([T.req_of(r["prompt"]) for r in all_rows]).astype(float)
            cells = []
            for sub in SUBSETS:
                idx = [i for i, r in enumerate(all_rows) if r["subset"] == sub]
                cells.append(f"{T.metrics(ln[idx], wk[idx], st[idx])['apgr']:.3f}")
            d = [r["difficulty"] for r in all_rows]
            print(f"| prompt length | {' | '.join(cells)} | {T.metrics(ln, wk, st)['apgr']:.3f} | {spearman(ln, d):.3f} |")
            cells = []
            for sub in SUBSETS:
                idx = [i for i, r in enumerate(all_rows) if r["subset"] == sub]
                cells.append(f"{T.metrics(np.array(d)[idx], wk[idx], st[idx])['apgr']:.3f}")
            print(f"| panel difficulty (oracle) | {' | '.join(cells)} | {T.metrics(np.array(d), wk, st)['apgr']:.3f} | 1 |")
            lens_done = True
        print(
            f"| {name} | {' | '.join(f'{a:.3f}' for a in apgr)} | {pooled:.3f} | {np.mean(sp):.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
