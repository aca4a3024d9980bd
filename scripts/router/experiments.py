"""Research harness of the complexity router (issue 5, second round): model selection by
cross-validation on the *training* split only, so that the two held-out sets stay untouched.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/router/experiments.py [--only NAME ...]

For each configuration, prints:
- CV subj: mean APGR over 4 folds of *unseen training subjects* (the 49 MMLU subjects of the
  training split, minus high_school_mathematics, shuffled with seed 11 and dealt into 4 folds;
  each fold is scored by a model fitted on the other subjects, GSM8K and the chat-train prompts);
- CV rand: mean APGR over 4 random folds of the training split (row i in fold i % 4);
- the held-out random / held-out subjects APGR and the chat-eval AUC of the model fitted on the
  whole training split (the protocol of train.py: same seeded splits, same metrics).
About 80 s per configuration on this machine. Nothing is written. Numbers: docs/routing.md,
"Second round".
"""

import argparse
import math
import random
import sys
import time

import numpy as np

import train as T
import features as F

WD = F.DEFAULT_SPEC["word_dim"]


class Matrix(T.Matrix):
    """train.Matrix built from already extracted features."""

    def __init__(self, feats):  # noqa: D107 (same layout as train.Matrix)
        rows, cols, vals, dense = [], [], [], []
        for r, (wi, ci, dd) in enumerate(feats):
            if wi:
                rows += [r] * len(wi)
                cols += wi
                vals += [1.0 / math.sqrt(len(wi))] * len(wi)
            if ci:
                rows += [r] * len(ci)
                cols += [c + WD for c in ci]
                vals += [1.0 / math.sqrt(len(ci))] * len(ci)
            dense.append(dd)
        self.n = len(feats)
        self.dim = WD + F.DEFAULT_SPEC["char_dim"]
        self.rows = np.asarray(rows, dtype=np.int64)
        self.cols = np.asarray(cols, dtype=np.int64)
        self.vals = np.asarray(vals, dtype=np.float64)
        self.dense = np.asarray(dense, dtype=np.float64).reshape(self.n, len(F.DENSE_NAMES))


def train_lr(X, y, sw, l2w, l2c, l2d, iters=300, lr=0.05):
    """train.train_lr with separate L2 on word and character buckets."""
    mean = X.dense.mean(axis=0)
    scale = X.dense.std(axis=0)
    scale[scale < 1e-6] = 1.0
    l2vec = np.where(np.arange(X.dim) < WD, l2w, l2c)
    params = [np.zeros(X.dim), np.zeros(X.dense.shape[1]), np.zeros(1)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    Dn = (X.dense - mean) / scale
    sws = sw.sum()
    for t in range(1, iters + 1):
        z = X.logits(params[0], params[1], params[2][0], mean, scale)
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))
        g = (p - y) * sw / sws
        grads = [X.grad_sparse(g) + l2vec * params[0], Dn.T @ g + l2d * params[1], np.array([g.sum()])]
        for i in range(3):
            m[i] = 0.9 * m[i] + 0.1 * grads[i]
            v[i] = 0.999 * v[i] + 0.001 * grads[i] ** 2
            params[i] = params[i] - lr * (m[i] / (1 - 0.9**t)) / (np.sqrt(v[i] / (1 - 0.999**t)) + 1e-8)
    return params[0], params[1], float(params[2][0]), mean, scale


CONFIGS = {
    "base": {},  # complexity-v1: L2 1e-5 sparse, 1e-3 dense, gain label, chat weight 20
    "l2c_3e-5": {"l2c": 3e-5},
    "l2c_1e-4": {"l2c": 1e-4},
    "l2w_3e-6": {"l2w": 3e-6},
    "l2w_3e-6_l2c_3e-5": {"l2w": 3e-6, "l2c": 3e-5},
    "l2_3e-6": {"l2w": 3e-6, "l2c": 3e-6},
    "l2d_1e-2": {"l2d": 1e-2},
    "needs_strong": {"label": "needs_strong"},
    "dense_only": {"l2w": 1.0, "l2c": 1.0},
    "words_dense": {"l2c": 1.0},
    "chars_dense": {"l2w": 1.0},
    "chat_w_5": {"chat_w": 5.0},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    rows = T.load_rows(T.DATA)
    train, held, subj, _ = T.split(rows)
    chat = T.load_chat()
    chat_tr = [c for c in chat if c["split"] == "train"]
    chat_ev = [c for c in chat if c["split"] == "eval"]
    ex = lambda reqs: [F.extract(r, F.DEFAULT_SPEC) for r in reqs]  # noqa: E731
    TR = [r for r in train if r["subject"] not in T.LABEL_ARTIFACT_SUBJECTS]
    TR = list(zip(TR, ex([T.req_of(r["prompt"]) for r in TR])))
    HELD = list(zip(held, ex([T.req_of(r["prompt"]) for r in held])))
    SUBJ = list(zip(subj, ex([T.req_of(r["prompt"]) for r in subj])))
    CH = ex([c["request"] for c in chat_tr])
    CHY = [float(c["hard"]) for c in chat_tr]
    CE = ex([c["request"] for c in chat_ev])
    CEY = np.array([c["hard"] for c in chat_ev])

    def fit(part, cfg):
        X = Matrix([f for _, f in part] + CH)
        y = np.concatenate([T.labels([r for r, _ in part], cfg.get("label", "gain")), CHY])
        sw = np.concatenate([np.ones(len(part)), np.full(len(CH), cfg.get("chat_w", 20.0))])
        return train_lr(X, y, sw, cfg.get("l2w", 1e-5), cfg.get("l2c", 1e-5), cfg.get("l2d", 1e-3))

    def apgr(p, part):
        s = Matrix([f for _, f in part]).logits(*p)
        return T.metrics(s, [r["weak"] for r, _ in part], [r["strong"] for r, _ in part])["apgr"]

    subs = sorted({r["subject"] for r, _ in TR if r["source"] == "mmlu"})
    random.Random(11).shuffle(subs)
    for name, cfg in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        t0 = time.time()
        gs, rs = [], []
        for k in range(4):
            fs = set(subs[k::4])
            p = fit([x for x in TR if x[0]["subject"] not in fs], cfg)
            gs.append(apgr(p, [x for x in TR if x[0]["subject"] in fs]))
        for k in range(4):
            p = fit([x for i, x in enumerate(TR) if i % 4 != k], cfg)
            rs.append(apgr(p, [x for i, x in enumerate(TR) if i % 4 == k]))
        p = fit(TR, cfg)
        chat_auc = T.auc(Matrix(CE).logits(*p), CEY)
        print(
            f"{name:20s} CV subj {np.mean(gs):.3f} ({' '.join(f'{x:.2f}' for x in gs)}) "
            f"CV rand {np.mean(rs):.3f} | held-out random {apgr(p, HELD):.3f} "
            f"held-out subjects {apgr(p, SUBJ):.3f} chat-eval AUC {chat_auc:.3f} "
            f"[{time.time() - t0:.0f}s]",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
