"""Panel-difficulty labels for open-ended prompts from the AlpacaEval leaderboard data (issue 19).

    python3 scripts/router/build_open_labels.py /path/to/alpaca_eval.git OUT.jsonl.gz

Input: a git directory of tatsu-lab/alpaca_eval (Apache-2.0; code and data). Its
`results/<model>/<annotator>/annotations.json` files hold, for each of the 805 AlpacaEval
instructions, a GPT-4 judge's preference between a reference answer (`generator_1`) and the
model's answer (`generator_2`): 1 = reference better, 2 = model better, values in between for the
weighted (logprob) annotators, 0 for a tie in the old format. Every version of every such file in
the repository's history is read (newest first, one per path); a file that is not in the
snapshot (the store keeps no file of 4 MiB or more) is skipped.

Output, one JSON object per instruction: `source` = "alpaca_eval", `id`, `subset` (AlpacaEval's
component dataset: helpful_base, koala, oasst, selfinstruct, vicuna), `prompt`, and
- `difficulty` (0..1): the share of the panel that loses to the reference, per panel
  (`difficulty_gpt4t`: reference gpt4_1106_preview, judged by GPT-4 Turbo annotators;
  `difficulty_davinci`: reference text_davinci_003, judged by GPT-4), each model's losses
  centred on that model's mean loss (so a model that is missing on some items does not move
  them) plus the panel's mean. `difficulty` is `difficulty_gpt4t`, the same construction as
  the arena labels of shared/routing (share of the panel below gpt-4-1106-preview). The two
  panels do not agree (Spearman about -0.1): against a fixed reference answer, "the panel
  loses" measures the reference's answer as much as the item, and text_davinci_003's answers
  are weak where GPT-4 Turbo's are strong.
- `n_models_gpt4t`, `n_models_davinci`.
- `per_model_win` (model -> win probability against the gpt4_1106_preview reference, 0..1) for
  the models of the first panel: the named pairs of the evaluation are read from it.

The data stay out of the repository (they are the leaderboard's, not ours): train.py reads the
output path given with --open-labels.
"""

import collections
import gzip
import json
import subprocess
import sys

import numpy as np


# Not panel members: the reference itself under another name, the repository's example entry and
# a deliberately gamed entry.
NOT_PANEL = {"gpt4_turbo", "gpt4_1106_preview", "example", "gpt4_gamed"}


def git(repo, *args, binary=False, partial=False):
    """Output of a git command (None on failure; with `partial`, whatever it printed: `git log`
    stops with an error at the first blob the snapshot lacks, after printing what it could)."""
    out = subprocess.run(["git", "--git-dir", repo, *args], capture_output=True, check=False)
    if out.returncode != 0 and not partial:
        return None
    return out.stdout if binary else out.stdout.decode("utf-8", "replace")


def annotation_blobs(repo):
    """(path, blob sha) of every annotations.json under results/, newest version per path,
    only blobs present in the snapshot."""
    log = git(repo, "log", "--all", "--no-renames", "--raw", "--no-abbrev", "--format=format:C", "--", "results/", partial=True)
    seen, out = set(), []
    for line in log.splitlines():
        if not line.startswith(":"):
            continue
        meta, path = line.split("\t", 1)
        sha = meta.split()[3]
        if not path.endswith("annotations.json") or path in seen or set(sha) == {"0"}:
            continue
        seen.add(path)
        if subprocess.run(["git", "--git-dir", repo, "cat-file", "-e", sha], capture_output=True).returncode == 0:
            out.append((path, sha))
    return out


def loss_of(pref):
    """Loss of the model against the reference, 0..1 (None if unusable)."""
    if pref is None:
        return None
    try:
        p = float(pref)
    except (TypeError, ValueError):
        return None
    if p != p:
        return None
    if p == 0.0:  # old format: tie
        return 0.5
    return min(1.0, max(0.0, 2.0 - p))


def panel_difficulty(losses):
    """losses: model -> {instruction: loss}. Centred per model, averaged per item."""
    items = collections.defaultdict(list)
    grand = np.mean([v for m in losses.values() for v in m.values()])
    for m, d in losses.items():
        mu = np.mean(list(d.values()))
        for k, v in d.items():
            items[k].append(v - mu)
    return {k: float(min(1.0, max(0.0, grand + np.mean(v)))) for k, v in items.items()}, {
        k: len(v) for k, v in items.items()
    }


def main():
    repo, out_path = sys.argv[1], sys.argv[2]
    blobs = annotation_blobs(repo)
    gpt4t = {}  # model -> {instruction: loss}
    davinci = {}
    meta = {}  # instruction -> (dataset)
    order = []
    for path, sha in blobs:
        raw = git(repo, "cat-file", "-p", sha, binary=True)
        try:
            rows = json.loads(raw)
        except (ValueError, TypeError):
            continue
        if not isinstance(rows, list) or not rows:
            continue
        refs = collections.Counter(r.get("generator_1") for r in rows)
        ref = refs.most_common(1)[0][0]
        if ref == "gpt4_1106_preview":
            panel = gpt4t
        elif ref == "text_davinci_003":
            panel = davinci
        else:
            continue
        gens = collections.Counter(r.get("generator_2") for r in rows)
        model = gens.most_common(1)[0][0]
        if model in (ref,) or model in NOT_PANEL:
            continue
        annot = path.split("/")[-2] if path.count("/") >= 3 else "alpaca_eval_gpt4"
        key = f"{model}|{annot}"
        if key in panel:
            continue
        d = {}
        for r in rows:
            ins = r.get("instruction")
            lo = loss_of(r.get("preference"))
            if not isinstance(ins, str) or lo is None or r.get("generator_1") != ref:
                continue
            d[ins] = lo
            if ins not in meta:
                meta[ins] = r.get("dataset")
                order.append(ins)
        if len(d) >= 700:
            panel[key] = d
    dg, ng = panel_difficulty(gpt4t)
    dd, nd = panel_difficulty(davinci)
    # win probability against gpt4_1106_preview per model (weighted annotator preferred)
    wins = {}
    for key, d in sorted(gpt4t.items(), key=lambda kv: (not kv[0].endswith("|weighted_alpaca_eval_gpt4_turbo"), kv[0])):
        model = key.split("|")[0]
        if model not in wins:
            wins[model] = {k: 1.0 - v for k, v in d.items()}
    print(f"panels: gpt4_1106_preview reference {len(gpt4t)} model-annotator files, "
          f"text_davinci_003 reference {len(davinci)}; instructions {len(order)}", file=sys.stderr)
    both = [k for k in order if k in dg and k in dd]
    a = np.array([dg[k] for k in both])
    b = np.array([dd[k] for k in both])
    rk = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    print(f"Spearman between the panels: {np.corrcoef(rk(a), rk(b))[0, 1]:.3f} on {len(both)}", file=sys.stderr)
    with gzip.open(out_path, "wt", encoding="utf-8") as f:
        for i, ins in enumerate(order):
            rec = {
                "source": "alpaca_eval",
                "id": f"alpaca_eval-{i}",
                "subset": meta[ins],
                "prompt": ins,
                "difficulty": dg.get(ins),
                "difficulty_gpt4t": dg.get(ins),
                "difficulty_davinci": dd.get(ins),
                "n_models_gpt4t": ng.get(ins, 0),
                "n_models_davinci": nd.get(ins, 0),
                "per_model_win": {m: round(w[ins], 4) for m, w in sorted(wins.items()) if ins in w},
                "license": "Apache-2.0 (tatsu-lab/alpaca_eval)",
            }
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
