"""Model selection for router v2 (issue 19) on the *training* split only: the held-out sources
of train.py (MMLU-Pro engineering / math / physics / theoremQA, the MMLU subjects filed under
them, 20% of GSM8K, Chatbot Arena, SimpleQA) are never read here.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/router/experiments.py [--only NAME ...]

For each configuration: 4 folds of *unseen training topics* (the 11 training MMLU-Pro subjects
dealt into 4 folds with seed 23, each with the MMLU subjects filed under them, and a quarter of
the training GSM8K problems); each fold is scored by a model fitted on the other three folds plus
the hand-written chat and Chinese training prompts. Printed: the mean APGR over the folds for
MMLU-Pro items (named pair), MMLU prompts and GSM8K problems, and the AUC on the hand-written
chat-eval prompts of the model fitted on all four folds. Numbers: docs/routing.md, "Router v2".
"""

import argparse
import random
import sys

import numpy as np

import train as T
import synth

CONFIGS = {
    "v2": {},
    "gain_irt target": {"pro_target": "gain_irt"},
    "pair target": {"pro_target": "pair"},
    "difficulty x gain_irt": {"pro_target": "blend"},
    "no routellm MMLU": {"no_routellm_mmlu": True},
    "routellm weight 0.5": {"routellm_weight": 0.5},
    "L2 3e-5": {"l2": 3e-5},
    "L2 3e-6": {"l2": 3e-6},
    "chat weight 40": {"chat_weight": 40.0},
    "v3: AlpacaEval weight 5": {"open_weight": 5.0},
    "v3: AlpacaEval weight 20": {"open_weight": 20.0},
    "v3: AlpacaEval weight 50": {"open_weight": 50.0},
}


class Args:
    def __init__(self, **kw):
        self.l2 = 1e-5
        self.l2_dense = 1e-3
        self.iters = 300
        self.chat_weight = 20.0
        self.zh_weight = 5.0
        self.routellm_weight = 1.0
        self.no_routellm_mmlu = False
        self.pro_target = "difficulty"
        self.open_weight = 0.0
        self.open_target = "raw"
        for k, v in kw.items():
            setattr(self, k, v)


def folds(train, mmlu_to_sub):
    subs = sorted({r["subset"] for r in train if r.get("source") == "mmlu_pro"})
    random.Random(23).shuffle(subs)
    fold_of_sub = {s: i % 4 for i, s in enumerate(subs)}
    out = []
    gi = 0
    for r in train:
        if r.get("source") == "mmlu_pro":
            out.append(fold_of_sub[r["subset"]])
        elif r.get("source") == "alpaca_eval":
            out.append(-1)  # open-ended: always on the training side here (experiments_open.py)
        elif r.get("source") == "gsm8k":
            out.append(gi % 4)
            gi += 1
        else:
            out.append(fold_of_sub.get(mmlu_to_sub.get(r["subject"]), gi % 4))
    return np.array(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--rarity", action="store_true", help="add the wordfreq features (experiments_open.py)")
    opts = ap.parse_args()
    if opts.rarity:
        import experiments_open

        experiments_open.add_rarity_features()
    rl = T.load_rows(T.DATA)
    many = T.load_many()
    train, _, _ = T.split(rl, many, T.load_open())
    mmlu_to_sub = {"moral_scenarios": "philosophy"}
    for r in many:
        if r["source"] == "mmlu_pro" and r["origin"].startswith("ori_mmlu-"):
            mmlu_to_sub[r["origin"][len("ori_mmlu-"):]] = r["subset"]
    fold = folds(train, mmlu_to_sub)
    chat = T.load_chat()
    chat_train = [c for c in chat if c["split"] == "train"]
    chat_eval = [c for c in chat if c["split"] == "eval"]
    zh_train = [z for z in synth.chinese_set() if z["split"] == "train"]
    feats = T.Features(dict(T.F.DEFAULT_SPEC))
    print("| configuration | MMLU-Pro (unseen subjects) | MMLU (unseen subjects) | GSM8K (unseen problems) | chat-eval AUC |")
    print("|---|---:|---:|---:|---:|")
    for name, kw in CONFIGS.items():
        if opts.only and name not in opts.only:
            continue
        args = Args(**kw)
        res = {"mmlu_pro": [], "mmlu": [], "gsm8k": []}
        for k in range(4):
            rest = [r for r, f in zip(train, fold) if f != k]
            part = [r for r, f in zip(train, fold) if f == k]
            reqs, y, sw = T.training_set(rest, chat_train, zh_train, args)
            p = T.train_lr(feats.matrix(reqs), y, sw, args.l2, args.l2_dense, iters=args.iters)
            z = feats.matrix([T.req_of(r["prompt"]) for r in part]).logits(*p)
            for src in res:
                idx = [i for i, r in enumerate(part) if r.get("source") == src and r.get("subject") not in T.LABEL_ARTIFACT_SUBJECTS]
                wk = np.array([T.pair(part[i])[0] for i in idx])
                st = np.array([T.pair(part[i])[1] for i in idx])
                res[src].append(T.metrics(z[idx], wk, st)["apgr"])
        reqs, y, sw = T.training_set(train, chat_train, zh_train, args)
        p = T.train_lr(feats.matrix(reqs), y, sw, args.l2, args.l2_dense, iters=args.iters)
        ce = feats.matrix([c["request"] for c in chat_eval]).logits(*p)
        a = T.auc(ce, np.array([c["hard"] for c in chat_eval]))
        cells = " | ".join(f"{np.mean(res[s]):.3f} ({' '.join(f'{x:.2f}' for x in res[s])})" for s in res)
        print(f"| {name} | {cells} | {a:.3f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
