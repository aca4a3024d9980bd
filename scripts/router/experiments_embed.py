"""Issue 19, fourth round: does a static (distilled) token embedding read open-ended difficulty
better than the hashed n-grams? Training split only unless --heldout is given.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/router/experiments_embed.py STATIC.npz tokcheck
    OMP_NUM_THREADS=1 .venv/bin/python scripts/router/experiments_embed.py STATIC.npz in-domain
    OMP_NUM_THREADS=1 .venv/bin/python scripts/router/experiments_embed.py STATIC.npz mlp
    OMP_NUM_THREADS=1 .venv/bin/python scripts/router/experiments_embed.py STATIC.npz open-only
    OMP_NUM_THREADS=1 .venv/bin/python scripts/router/experiments_embed.py STATIC.npz open-folds
    OMP_NUM_THREADS=1 .venv/bin/python scripts/router/experiments_embed.py STATIC.npz topic-folds
    OMP_NUM_THREADS=1 .venv/bin/python scripts/router/experiments_embed.py STATIC.npz heldout NAME ...

STATIC.npz: distill.py's output (vocabulary, PCA-reduced token vectors, the full 384-dim ones).
The sentence vector of a request is the mean of its known tokens' vectors (embedding.py), each
optionally scaled by a SIF weight a / (a + p(token)) with p from token counts over the
*training* prompts. A candidate model is complexity-v2's logistic regression with the sentence
vector appended to its dense features (standardised like them; their own L2).
"""

import argparse
import json
import sys

import numpy as np

import embedding as EMB
import experiments as E
import experiments_open as EO
import synth
import train as T

# Configurations: sentence-vector dims (0: none), SIF a (0: unweighted), L2 of the embedding
# weights, weight of the AlpacaEval training rows (0: not trained on, the v2 recipe).
CONFIGS = {
    "v2 (no embedding)": dict(dims=0),
    "v2, AlpacaEval 20": dict(dims=0, open_weight=20.0),
    "emb 32, L2 1e-2": dict(dims=32, sif=0.0, l2e=1e-2),
    "emb 32, L2 1e-4": dict(dims=32, sif=0.0, l2e=1e-4),
    "emb 32, L2 1e-2, AlpacaEval 20": dict(dims=32, sif=0.0, l2e=1e-2, open_weight=20.0),
    "emb 32, L2 1e-1, AlpacaEval 20": dict(dims=32, sif=0.0, l2e=1e-1, open_weight=20.0),
    "emb 32, L2 1e-2, AlpacaEval 100": dict(dims=32, sif=0.0, l2e=1e-2, open_weight=100.0),
    "emb 8, L2 1e-2, AlpacaEval 20": dict(dims=8, sif=0.0, l2e=1e-2, open_weight=20.0),
    "emb 64, L2 1e-1, AlpacaEval 20": dict(dims=64, sif=0.0, l2e=1e-1, open_weight=20.0),
    "emb 32, SIF 1e-3, L2 1e-2, AlpacaEval 20": dict(dims=32, sif=1e-3, l2e=1e-2, open_weight=20.0),
}


class Static:
    def __init__(self, path):
        z = np.load(path)
        self.vocab_list = [str(t) for t in z["vocab"]]
        self.vocab = {t: i for i, t in enumerate(self.vocab_list)}
        self.unk = self.vocab["[UNK]"]
        self.pca = z["vecs"].astype(np.float64)
        self.full = z["full"].astype(np.float64)
        self.ids_cache = {}

    def ids(self, req):
        key = json.dumps(req, sort_keys=True, ensure_ascii=False)
        v = self.ids_cache.get(key)
        if v is None:
            text = last_user_capped(req)
            v = np.asarray(EMB.tokenize(text, self.vocab, self.unk), dtype=np.int64)
            self.ids_cache[key] = v
        return v

    def counts(self, reqs):
        c = np.zeros(len(self.vocab_list))
        for r in reqs:
            np.add.at(c, self.ids(r), 1.0)
        return c

    def sentence(self, reqs, dims, weights):
        table = self.full if dims == 384 else self.pca[:, :dims]
        out = np.zeros((len(reqs), table.shape[1] + 1))
        for i, r in enumerate(reqs):
            ids = self.ids(r)
            known = ids[ids != self.unk]
            if len(known):
                out[i, :-1] = (table[known] * weights[known, None]).mean(axis=0)
            out[i, -1] = len(known) / len(ids) if len(ids) else 0.0  # known_share
        return out


def last_user_capped(req):
    msgs = req.get("messages") if isinstance(req, dict) else None
    if not isinstance(msgs, list):
        return ""
    last = None
    for m in msgs:
        if isinstance(m, dict) and m.get("role") == "user":
            last = m
    if last is None:
        return ""
    b = T.F.content_text(last.get("content")).encode("utf-8")
    return T.F.cap_text(b, T.F.DEFAULT_SPEC["max_text_bytes"]).decode("utf-8")


def sif_weights(static, train_reqs, a):
    if not a:
        return np.ones(len(static.vocab_list))
    c = static.counts(train_reqs) + 1.0
    p = c / c.sum()
    return a / (a + p)


class Model:
    """v2 features + sentence vector, one logistic regression."""

    def __init__(self, feats, static, cfg):
        self.feats, self.static, self.cfg = feats, static, cfg

    def matrix(self, reqs):
        m = self.feats.matrix(reqs)
        if self.cfg.get("dims"):
            m.dense = np.hstack([m.dense, self.static.sentence(reqs, self.cfg["dims"], self.w)])
        return m

    def fit(self, reqs, y, sw):
        if self.cfg.get("dims"):
            self.w = sif_weights(self.static, reqs, self.cfg.get("sif", 0.0))
        X = self.matrix(reqs)
        nd = len(T.F.DENSE_NAMES)
        # Per-column L2 on the dense part: v2's 1e-3 on its own features, l2e on the embedding.
        l2d = np.full(X.dense.shape[1], 1e-3)
        l2d[nd:] = self.cfg.get("l2e", 1e-3)
        self.p = T.train_lr(X, y, sw, self.cfg.get("l2", 1e-5), l2d, iters=300)
        return self

    def logits(self, reqs):
        return self.matrix(reqs).logits(*self.p)


def args_of(cfg):
    return E.Args(open_weight=cfg.get("open_weight", 0.0), l2=cfg.get("l2", 1e-5))


def spearman(a, b):
    return EO.spearman(a, b)


def setup():
    rl = T.load_rows(T.DATA)
    many = T.load_many()
    open_rows = T.load_open()
    train, held, _ = T.split(rl, many, open_rows)
    chat = T.load_chat()
    zh = synth.chinese_set()
    return rl, many, open_rows, train, held, chat, zh


def tokcheck(static, train, held, zh):
    """embedding.py's tokeniser against the reference WordPiece tokeniser of the model
    (`tokenizers` package, the model's tokenizer.json): 3,000 sampled training and held-out
    prompts, the Chinese set and mixed-script cases; prints the mismatches (expected: none)."""
    import os
    import random

    from tokenizers import Tokenizer

    import distill

    tk = Tokenizer.from_file(os.path.join(distill.model_dir(), "tokenizer.json"))
    tk.no_truncation()
    tk.no_padding()
    rows = train + [r for part in held.values() for r in part]
    texts = [r["prompt"] for r in random.Random(0).sample(rows, 3000)]
    texts += [z["zh"]["messages"][0]["content"] for z in zh]
    texts += ["日本語のテキスト、カタカナ。ＡＢＣ１２３？ 한국어 텍스트 naïve café Ωmega 🙂🙂 x İstanbul ß ﬁ 32°F"]
    bad = 0
    unk = []
    for t in texts:
        a = tk.encode(t).ids[1:-1]
        b = EMB.tokenize(t, static.vocab, static.unk, 10**9)
        if a != b:
            bad += 1
            print(repr(t[:120]), file=sys.stderr)
    for z in zh:
        ids = EMB.tokenize(z["zh"]["messages"][0]["content"], static.vocab, static.unk)
        unk.append(np.mean([i == static.unk for i in ids]))
    print(f"tokeniser mismatches: {bad} of {len(texts)} texts; Chinese prompts: {np.mean(unk)*100:.0f}% of tokens are [UNK] "
          f"({sum(1 for t in static.vocab_list if len(t) == 1 and EMB.is_cjk(ord(t)))} CJK ideographs in the vocabulary)")


def in_domain(static, train, feats):
    """10-fold CV on the 617 training AlpacaEval prompts alone: ridge on the sentence vector
    (several dims / weightings) against the hashed model, APGR of the arena-like pair and
    Spearman with the panel difficulty."""
    pair = T.OPEN_PAIRS["alpaca_eval oasst (held-out subset)"]
    rows = [dict(r, pair=pair) for r in train if r.get("source") == "alpaca_eval"]
    reqs = [T.req_of(r["prompt"]) for r in rows]
    rng = np.random.default_rng(T.SEED)
    fold = rng.permutation(len(rows)) % 10
    wk = np.array([T.pair(r)[0] for r in rows])
    st = np.array([T.pair(r)[1] for r in rows])
    d = np.array([r["difficulty"] for r in rows])
    print("| in-domain 10-fold, AlpacaEval training prompts | APGR | Spearman with difficulty |")
    print("|---|---:|---:|")
    ln = T.length_scores(reqs).astype(float)
    print(f"| prompt length | {T.metrics(ln, wk, st)['apgr']:.3f} | {spearman(ln, d):.3f} |")
    all_train_reqs = [T.req_of(r["prompt"]) for r in train]
    for dims in (8, 16, 32, 64, 128, 384):
        for a in (0.0, 1e-3):
            w = sif_weights(static, all_train_reqs, a)
            S = static.sentence(reqs, dims, w)
            for lam in (10.0, 100.0, 1000.0, 5000.0):
                z = np.zeros(len(rows))
                for k in range(10):
                    tr, te = fold != k, fold == k
                    mu, sd = S[tr].mean(0), S[tr].std(0) + 1e-9
                    Xtr, Xte = (S[tr] - mu) / sd, (S[te] - mu) / sd
                    yt = d[tr] - d[tr].mean()
                    beta = np.linalg.solve(Xtr.T @ Xtr + lam * np.eye(S.shape[1]), Xtr.T @ yt)
                    z[te] = Xte @ beta
                print(f"| ridge on sentence vector, {dims} dims, SIF {a:g}, lambda {lam:g} | "
                      f"{T.metrics(z, wk, st)['apgr']:.3f} | {spearman(z, d):.3f} |", flush=True)


def mlp_in_domain(static, train, feats):
    """The in-domain protocol with a tiny MLP (one tanh layer, squared loss, Adam, weight
    decay) over the sentence vector plus the 20 dense features: does a non-linear head read more
    than the ridge?"""
    pair = T.OPEN_PAIRS["alpaca_eval oasst (held-out subset)"]
    rows = [dict(r, pair=pair) for r in train if r.get("source") == "alpaca_eval"]
    reqs = [T.req_of(r["prompt"]) for r in rows]
    d = np.array([r["difficulty"] for r in rows])
    wk = np.array([T.pair(r)[0] for r in rows])
    st = np.array([T.pair(r)[1] for r in rows])
    dense = feats.matrix(reqs).dense
    fold = np.random.default_rng(T.SEED).permutation(len(rows)) % 10

    def fit(Xtr, ytr, Xte, h, wd, iters=2000, lr=0.01):
        rng = np.random.default_rng(0)
        P = [rng.normal(0, 1 / np.sqrt(Xtr.shape[1]), (Xtr.shape[1], h)), np.zeros(h),
             rng.normal(0, 1 / np.sqrt(h), h), np.zeros(1)]
        m = [np.zeros_like(p) for p in P]
        v = [np.zeros_like(p) for p in P]
        for t in range(1, iters + 1):
            H = np.tanh(Xtr @ P[0] + P[1])
            e = (H @ P[2] + P[3][0] - ytr) / len(ytr)
            gH = np.outer(e, P[2]) * (1 - H**2)
            G = [Xtr.T @ gH + wd * P[0], gH.sum(0), H.T @ e + wd * P[2], np.array([e.sum()])]
            for i in range(4):
                m[i] = 0.9 * m[i] + 0.1 * G[i]
                v[i] = 0.999 * v[i] + 0.001 * G[i] ** 2
                P[i] = P[i] - lr * (m[i] / (1 - 0.9**t)) / (np.sqrt(v[i] / (1 - 0.999**t)) + 1e-8)
        return np.tanh(Xte @ P[0] + P[1]) @ P[2]

    print("| MLP, in domain (AlpacaEval training prompts, 10-fold) | APGR | Spearman |\n|---|---:|---:|")
    for dims in (8, 32):
        S = np.hstack([static.sentence(reqs, dims, np.ones(len(static.vocab_list))), dense])
        for h in (8, 32):
            for wd in (1e-2, 1e-1):
                z = np.zeros(len(rows))
                for k in range(10):
                    tr, te = fold != k, fold == k
                    mu, sd = S[tr].mean(0), S[tr].std(0) + 1e-9
                    z[te] = fit((S[tr] - mu) / sd, d[tr] - d[tr].mean(), (S[te] - mu) / sd, h, wd)
                print(f"| {dims} dims + dense, {h} units, weight decay {wd:g} | {T.metrics(z, wk, st)['apgr']:.3f} | {spearman(z, d):.3f} |", flush=True)


def open_only(static, train):
    """Leave-one-subset-out on the AlpacaEval training subsets with a ridge on the sentence
    vector fitted on the other three subsets alone (no other data): does what the embedding
    learns about open-ended difficulty transfer from one prompt collection to another?"""
    pair = T.OPEN_PAIRS["alpaca_eval oasst (held-out subset)"]
    rows = [dict(r, pair=pair) for r in train if r.get("source") == "alpaca_eval"]
    reqs = [T.req_of(r["prompt"]) for r in rows]
    sub = np.array([r["subset"] for r in rows])
    d = np.array([r["difficulty"] for r in rows])
    wk = np.array([T.pair(r)[0] for r in rows])
    st = np.array([T.pair(r)[1] for r in rows])
    print("| ridge on sentence vector, AlpacaEval only | " + " | ".join(EO.SUBSETS) + " | pooled APGR | Spearman |")
    print("|---|" + "---:|" * (len(EO.SUBSETS) + 2))
    ln = T.length_scores(reqs).astype(float)
    cells = [T.metrics(ln[sub == s], wk[sub == s], st[sub == s])["apgr"] for s in EO.SUBSETS]
    print("| prompt length | " + " | ".join(f"{x:.3f}" for x in cells) + " | - | - |")
    for dims in (8, 32, 64):
        S = static.sentence(reqs, dims, np.ones(len(static.vocab_list)))
        for lam in (100.0, 1000.0, 5000.0):
            z = np.zeros(len(rows))
            cells, sp = [], []
            for s in EO.SUBSETS:
                tr, te = sub != s, sub == s
                mu, sd = S[tr].mean(0), S[tr].std(0) + 1e-9
                Xtr, Xte = (S[tr] - mu) / sd, (S[te] - mu) / sd
                beta = np.linalg.solve(Xtr.T @ Xtr + lam * np.eye(S.shape[1]), Xtr.T @ (d[tr] - d[tr].mean()))
                z[te] = Xte @ beta
                cells.append(T.metrics(z[te], wk[te], st[te])["apgr"])
                sp.append(spearman(z[te], d[te]))
            print(f"| {dims} dims, lambda {lam:g} | " + " | ".join(f"{x:.3f}" for x in cells)
                  + f" | {T.metrics(z, wk, st)['apgr']:.3f} | {np.mean(sp):.3f} |", flush=True)


def open_folds(static, train, feats, chat, zh, names):
    """experiments_open.py's protocol: each training AlpacaEval subset left out in turn."""
    chat_train = [c for c in chat if c["split"] == "train"]
    zh_train = [z for z in zh if z["split"] == "train"]
    pair = T.OPEN_PAIRS["alpaca_eval oasst (held-out subset)"]
    print("| configuration | " + " | ".join(EO.SUBSETS) + " | pooled APGR | Spearman with difficulty |")
    print("|---|" + "---:|" * (len(EO.SUBSETS) + 2))
    for name in names:
        cfg = CONFIGS[name]
        res, zs, wks, sts, sp = [], [], [], [], []
        for sub in EO.SUBSETS:
            rest = [r for r in train if not (r.get("source") == "alpaca_eval" and r["subset"] == sub)]
            part = [dict(r, pair=pair) for r in train if r.get("source") == "alpaca_eval" and r["subset"] == sub]
            reqs, y, sw = T.training_set(rest, chat_train, zh_train, args_of(cfg))
            m = Model(feats, static, cfg).fit(reqs, y, sw)
            z = m.logits([T.req_of(r["prompt"]) for r in part])
            wk = np.array([T.pair(r)[0] for r in part])
            st = np.array([T.pair(r)[1] for r in part])
            res.append(T.metrics(z, wk, st)["apgr"])
            zs.append(z - z.mean())
            wks.append(wk)
            sts.append(st)
            sp.append(spearman(z, [r["difficulty"] for r in part]))
        pooled = T.metrics(np.concatenate(zs), np.concatenate(wks), np.concatenate(sts))["apgr"]
        print(f"| {name} | " + " | ".join(f"{x:.3f}" for x in res) + f" | {pooled:.3f} | {np.mean(sp):.3f} |", flush=True)


def topic_folds(static, train, feats, chat, zh, many, names):
    """experiments.py's protocol: 4 folds of unseen training topics."""
    mmlu_to_sub = {"moral_scenarios": "philosophy"}
    for r in many:
        if r["source"] == "mmlu_pro" and r["origin"].startswith("ori_mmlu-"):
            mmlu_to_sub[r["origin"][len("ori_mmlu-"):]] = r["subset"]
    fold = E.folds(train, mmlu_to_sub)
    chat_train = [c for c in chat if c["split"] == "train"]
    chat_eval = [c for c in chat if c["split"] == "eval"]
    zh_train = [z for z in zh if z["split"] == "train"]
    zh_eval = [z for z in zh if z["split"] == "eval"]
    print("| configuration | MMLU-Pro (unseen subjects) | MMLU (unseen subjects) | GSM8K (unseen problems) | chat-eval AUC | Chinese eval AUC |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        cfg = CONFIGS[name]
        res = {"mmlu_pro": [], "mmlu": [], "gsm8k": []}
        for k in range(4):
            rest = [r for r, f in zip(train, fold) if f != k]
            part = [r for r, f in zip(train, fold) if f == k]
            reqs, y, sw = T.training_set(rest, chat_train, zh_train, args_of(cfg))
            m = Model(feats, static, cfg).fit(reqs, y, sw)
            z = m.logits([T.req_of(r["prompt"]) for r in part])
            for src in res:
                idx = [i for i, r in enumerate(part) if r.get("source") == src and r.get("subject") not in T.LABEL_ARTIFACT_SUBJECTS]
                wk = np.array([T.pair(part[i])[0] for i in idx])
                st = np.array([T.pair(part[i])[1] for i in idx])
                res[src].append(T.metrics(z[idx], wk, st)["apgr"])
        reqs, y, sw = T.training_set(train, chat_train, zh_train, args_of(cfg))
        m = Model(feats, static, cfg).fit(reqs, y, sw)
        a = T.auc(m.logits([c["request"] for c in chat_eval]), np.array([c["hard"] for c in chat_eval]))
        az = T.auc(m.logits([z["zh"] for z in zh_eval]), np.array([z["hard"] for z in zh_eval]))
        cells = " | ".join(f"{np.mean(res[s]):.3f} ({' '.join(f'{x:.2f}' for x in res[s])})" for s in res)
        print(f"| {name} | {cells} | {a:.3f} | {az:.3f} |", flush=True)


def heldout(static, train, held, feats, chat, zh, names):
    """The chosen candidates on train.py's held-out sources (paired bootstrap as
    heldout_compare.py), plus the labelled chat / Chinese sets."""
    chat_train = [c for c in chat if c["split"] == "train"]
    chat_eval = [c for c in chat if c["split"] == "eval"]
    zh_train = [z for z in zh if z["split"] == "train"]
    zh_eval = [z for z in zh if z["split"] == "eval"]
    with open(T.os.path.join(T.ROOT, "conf", "router", "complexity-v2.json"), encoding="utf-8") as f:
        v2 = json.load(f)
    models = []
    for name in names:
        cfg = CONFIGS[name]
        reqs, y, sw = T.training_set(train, chat_train, zh_train, args_of(cfg))
        models.append((name, Model(feats, static, cfg).fit(reqs, y, sw)))
    parts = list(held.items())
    for name, part in held.items():
        kept = [r for r in part if r.get("subject") not in T.LABEL_ARTIFACT_SUBJECTS]
        if len(kept) < len(part):
            parts.append((name + " without high_school_mathematics", kept))
    print("| source | n | complexity-v2 | " + " | ".join(n for n, _ in models) + " | prompt length | random | oracle |")
    print("|---|---:|" + "---|" * (len(models) + 2) + "---:|---:|")
    diffs = []
    for sname, part in parts:
        reqs = [T.req_of(r["prompt"]) for r in part]
        wk = np.array([T.pair(r)[0] for r in part])
        st = np.array([T.pair(r)[1] for r in part])
        scorers = [T.model_scores(v2, reqs)] + [m.logits(reqs) for _, m in models] + [T.length_scores(reqs).astype(float)]
        rng = np.random.default_rng(T.SEED)
        boot = np.zeros((200, len(scorers)))
        for i in range(200):
            idx = rng.integers(0, len(part), len(part))
            for j, sc in enumerate(scorers):
                boot[i, j] = T.metrics(sc[idx], wk[idx], st[idx])["apgr"]
        point = [T.metrics(sc, wk, st)["apgr"] for sc in scorers]
        cell = lambda j: f"{point[j]:.3f} ({np.quantile(boot[:, j], 0.025):.3f}-{np.quantile(boot[:, j], 0.975):.3f})"  # noqa: E731
        orc = f"{T.metrics(np.array([r['difficulty'] for r in part]), wk, st)['apgr']:.3f}" if "difficulty" in part[0] else "-"
        print(f"| {sname} | {len(part)} | " + " | ".join(cell(j) for j in range(len(scorers)))
              + f" | {T.random_metrics(wk, st)['apgr']:.3f} | {orc} |", flush=True)
        for j, (cn, _) in enumerate(models, start=1):
            for ref, k in (("complexity-v2", 0), ("length", len(scorers) - 1)):
                dd = boot[:, j] - boot[:, k]
                diffs.append(f"| {sname} | {cn} - {ref} | {point[j] - point[k]:+.3f} | "
                             f"{np.quantile(dd, 0.025):+.3f} to {np.quantile(dd, 0.975):+.3f} | {(dd > 0).mean()*100:.1f}% |")
    print("\n| source | difference | APGR | 95% interval (paired) | resamples > 0 |\n|---|---|---:|---|---:|")
    print("\n".join(diffs))
    print("\n| labelled set | complexity-v2 AUC | " + " | ".join(n for n, _ in models) + " |\n|---|---:|" + "---:|" * len(models))
    for lname, reqs, y in (
        ("chat eval", [c["request"] for c in chat_eval], [c["hard"] for c in chat_eval]),
        ("Chinese eval", [z["zh"] for z in zh_eval], [z["hard"] for z in zh_eval]),
        ("English twins", [z["en"] for z in zh_eval], [z["hard"] for z in zh_eval]),
    ):
        y = np.array(y)
        print(f"| {lname} | {T.auc(T.model_scores(v2, reqs), y):.3f} | "
              + " | ".join(f"{T.auc(m.logits(reqs), y):.3f}" for _, m in models) + " |")
    zs = [m.logits([z["zh"] for z in zh_eval]) for _, m in models]
    es = [m.logits([z["en"] for z in zh_eval]) for _, m in models]
    print("Chinese-English Spearman: " + ", ".join(f"{n} {spearman(a, b):.3f}" for (n, _), a, b in zip(models, zs, es)))


def contrib(static, train, held, chat, zh, feats, names):
    """How much the sentence vector moves the logit: per held-out source, the standard deviation
    of the embedding part of the logit (its weights times the standardised sentence vector)
    against that of the whole logit, for a model fitted on the whole training set."""
    chat_train = [c for c in chat if c["split"] == "train"]
    zh_train = [z for z in zh if z["split"] == "train"]
    nd = len(T.F.DENSE_NAMES)
    for name in names:
        cfg = CONFIGS[name]
        reqs, y, sw = T.training_set(train, chat_train, zh_train, args_of(cfg))
        m = Model(feats, static, cfg).fit(reqs, y, sw)
        _, dw, _, mean, scale = m.p
        cells = []
        for sname, part in held.items():
            M = m.matrix([T.req_of(r["prompt"]) for r in part])
            ze = ((M.dense[:, nd:] - mean[nd:]) / scale[nd:]) @ dw[nd:]
            z = M.logits(*m.p)
            cells.append(f"{sname}: {ze.std():.3f} of {z.std():.3f}")
        print(f"{name}: sd of the embedding part / of the logit: " + "; ".join(cells), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("static")
    ap.add_argument("what", choices=["tokcheck", "contrib", "in-domain", "mlp", "open-only", "open-folds", "topic-folds", "heldout"])
    ap.add_argument("names", nargs="*")
    a = ap.parse_args()
    static = Static(a.static)
    rl, many, open_rows, train, held, chat, zh = setup()
    feats = T.Features(dict(T.F.DEFAULT_SPEC))
    names = a.names or list(CONFIGS)
    if a.what == "contrib":
        contrib(static, train, held, chat, zh, feats, names)
    elif a.what == "tokcheck":
        tokcheck(static, train, held, zh)
    elif a.what == "mlp":
        mlp_in_domain(static, train, feats)
    elif a.what == "in-domain":
        in_domain(static, train, feats)
    elif a.what == "open-only":
        open_only(static, train)
    elif a.what == "open-folds":
        open_folds(static, train, feats, chat, zh, names)
    elif a.what == "topic-folds":
        topic_folds(static, train, feats, chat, zh, many, names)
    else:
        heldout(static, train, held, feats, chat, zh, names)


if __name__ == "__main__":
    sys.exit(main())
