"""Benchmark: self-training on scikit-learn digits with 20 / 50 / 100 labels vs scikit-learn baselines.

Protocol (ANCHORS.md): pixels / 16, 70/30 stratified train/test split per seed, a stratified
labeled subset of the train part (labels / 10 per class), the rest of the train part unlabeled,
accuracy on the test part. Methods measured in the same run on the same splits:
LogisticRegression, LabelSpreading(knn, 7), SelfTrainingClassifier(SVC, 0.75), our supervised
baseline (the bootstrap teacher of `self_train`) and `self_train` itself. The test labels are used
for the final score only. The gate's holdout is whatever `--holdout-fraction` says (default 0: the
gate judges on the labeled set, i.e. it only guards against collapse).

    .venv/bin/python bench/ssl_digits.py                      # everything, ~10-15 min on 2 cores
    .venv/bin/python bench/ssl_digits.py --labels 20 --seeds 2 # a quick partial run
Results are appended as JSON lines to --out (resumable: finished (labels, seed) pairs are skipped).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np


def split(seed: int, n_labels: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, stratify=y, random_state=seed)
    rng = np.random.default_rng(seed)
    per_class = n_labels // 10
    lab = np.concatenate([rng.choice(np.flatnonzero(y_tr == c), per_class, replace=False) for c in range(10)])
    mask = np.zeros(len(y_tr), bool)
    mask[lab] = True
    return X_tr, y_tr, mask, X_te, y_te


def sklearn_baselines(X_tr, y_tr, mask, X_te, y_te) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.semi_supervised import LabelSpreading, SelfTrainingClassifier
    from sklearn.svm import SVC

    y_semi = np.where(mask, y_tr, -1)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["logreg"] = float(LogisticRegression(max_iter=2000).fit(X_tr[mask], y_tr[mask]).score(X_te, y_te))
        out["label_spreading"] = float(LabelSpreading(kernel="knn", n_neighbors=7).fit(X_tr, y_semi).score(X_te, y_te))
        st = SelfTrainingClassifier(SVC(probability=True, gamma="scale"), threshold=0.75).fit(X_tr, y_semi)
        out["self_training_svc"] = float(st.score(X_te, y_te))
    return out


def ours(X_tr, y_tr, mask, X_te, y_te, settings, seed: int) -> dict:
    from trainer.engine import self_train

    img = lambda a: a.reshape(-1, 1, 8, 8)
    t = time.perf_counter()
    final, rounds, baseline = self_train(img(X_tr[mask]), y_tr[mask], img(X_tr[~mask]), None, n_classes=10,
                                         settings=settings, seed=seed)
    seconds = time.perf_counter() - t
    acc = lambda m: float((m.predict_proba(img(X_te)).argmax(1) == y_te).mean())
    pool_truth = y_tr[~mask]
    return {"supervised": acc(baseline), "self_train": acc(final), "self_train_seconds": seconds,
            "rounds": [{"round": r.round_index, "promoted": r.promoted, "accepted": len(r.accepted_idx),
                        "pseudo_label_accuracy": float((r.pseudo_labels == pool_truth[r.accepted_idx]).mean())
                        if len(r.accepted_idx) else None,
                        "student_test_accuracy": acc(r.student), "threshold": float(np.mean(r.threshold))}
                       for r in rounds]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--config", type=Path, help="engine YAML (default: bench/ssl_digits.yaml)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/ssl_digits.jsonl"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids OpenMP spin-waiting when the cores are shared)")
    parser.add_argument("--fresh", action="store_true", help="ignore previous results in --out")
    args = parser.parse_args()

    import torch

    from trainer.engine import EngineSettings

    torch.set_num_threads(args.threads)
    config = args.config or Path(__file__).with_name("ssl_digits.yaml")
    settings = EngineSettings.from_yaml(config) if config.exists() else EngineSettings()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.out.exists() and not args.fresh:
        for line in args.out.read_text().splitlines():
            rec = json.loads(line)
            done.add((rec["labels"], rec["seed"]))
    elif args.fresh and args.out.exists():
        args.out.unlink()
    for n_labels in args.labels:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            if (n_labels, seed) in done:
                continue
            data = split(seed, n_labels)
            rec = {"labels": n_labels, "seed": seed, **sklearn_baselines(*data), **ours(*data, settings, seed)}
            with args.out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"labels={n_labels} seed={seed} LS={rec['label_spreading']:.3f} sup={rec['supervised']:.3f} "
                  f"ours={rec['self_train']:.3f} ({rec['self_train_seconds']:.0f}s) "
                  f"rounds={[round(r['student_test_accuracy'], 3) for r in rec['rounds']]}", flush=True)
    summarize(args.out)


def summarize(path: Path) -> None:
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    methods = ["logreg", "label_spreading", "self_training_svc", "supervised", "self_train"]
    print("| labels | seeds | " + " | ".join(methods) + " | ours - LS | self_train s/run |")
    print("|---" * (len(methods) + 4) + "|")
    for n in sorted({r["labels"] for r in recs}):
        rs = [r for r in recs if r["labels"] == n]
        means = {m: np.mean([r[m] for r in rs]) for m in methods}
        print(f"| {n} | {len(rs)} | " + " | ".join(f"{means[m]:.3f}" for m in methods)
              + f" | {means['self_train'] - means['label_spreading']:+.3f}"
              + f" | {np.mean([r['self_train_seconds'] for r in rs]):.0f} |")


if __name__ == "__main__":
    main()
