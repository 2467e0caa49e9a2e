"""Per-round reports: `<root>/rounds/<n>/report.json`, `report.html` and PNG plots, plus an index.

`write_round_report(root, result, history, ...)` takes the reports ROOT folder (not the round's
folder) and writes `<root>/rounds/<result.round_index>/`. Plots (matplotlib, drawn on `Figure`
objects with the Agg canvas, so no global backend is switched): holdout accuracy over rounds and
versions, the student's confusion matrix, per-class precision/recall/F1 (student vs teacher),
confidence histogram of accepted vs rejected pseudo-labels (by reason), label distribution
(labeled vs pseudo-labeled vs synthetic), a 2-D PCA embedding of labeled / pseudo-labeled /
rejected samples, and for images a grid of real vs generated samples. The page also states whether
the synthetic samples helped (`RoundResult.synthetic_effect`).

`history` is a list of dicts, one per earlier round, as built by `history_entry(result, version)`
(keys: round, teacher_accuracy, student_accuracy, promoted, version, accepted, reason); a
`RoundResult.summary()` dict works too. `write_index(root)` writes `<root>/index.html` (or another
file name) linking every round found under `<root>/rounds/`.

Called by `pseudoserve fit` (`on_round`) and by the online trainer after each round.
"""

from __future__ import annotations

import html
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MAX_EMBEDDED_POINTS = 3000
REJECT_REASONS = ("threshold", "balance", "ood")


# ---------------------------------------------------------------------------------------------
# reading RoundResult / Evaluation / history defensively (dicts or objects)


def _get(obj: object, name: str, default: object = None) -> object:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _per_class(ev: object) -> dict[str, np.ndarray]:
    pc = _get(ev, "per_class")
    out = {}
    for key in ("precision", "recall", "f1", "support"):
        value = _get(pc, key) if pc is not None else _get(ev, key)
        if value is not None:
            out[key] = np.asarray(value, dtype=np.float64)
    return out


def _accuracy(ev: object) -> float | None:
    acc = _get(ev, "accuracy")
    return None if acc is None else float(acc)


def history_entry(result: object, version: int | None = None) -> dict:
    """The compact per-round dict the accuracy-over-rounds plot and the index read."""
    rejected = dict(_get(result, "rejected") or {})
    return {
        "round": int(_get(result, "round_index")),
        "teacher_accuracy": _accuracy(_get(result, "teacher_eval")),
        "student_accuracy": _accuracy(_get(result, "student_eval")),
        "promoted": bool(_get(result, "promoted")),
        "version": version,
        "accepted": len(_get(result, "accepted_idx", [])),
        "rejected": {k: int(v) for k, v in rejected.items()},
        "reason": str(_get(result, "reason", "")),
    }


def _entry_value(entry: dict, key: str) -> object:
    if key in entry:
        return entry[key]
    round_key = {"round": "round_index"}.get(key)
    if round_key and round_key in entry:
        return entry[round_key]
    if key.endswith("_accuracy"):  # RoundResult.summary() nests the evaluations
        role = key[: -len("_accuracy")]
        ev = entry.get(f"{role}_eval", entry.get(role))
        return _accuracy(ev) if isinstance(ev, dict) or hasattr(ev, "accuracy") else None
    return None


def _normalized(entry: dict) -> dict:
    """A history dict in `history_entry`'s shape, whichever shape it came in."""
    keys = ("round", "teacher_accuracy", "student_accuracy", "promoted", "version", "accepted", "rejected", "reason")
    return {k: _entry_value(entry, k) for k in keys}


# ---------------------------------------------------------------------------------------------
# plots: each returns the PNG file name written into `folder`, or None when there is nothing to plot


def _figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=90, layout="constrained")


def _save(fig, folder: Path, name: str) -> str:
    fig.savefig(folder / name, format="png")
    return name


def plot_accuracy(folder: Path, entries: Sequence[dict]) -> str | None:
    rounds = [_entry_value(e, "round") for e in entries]
    teacher = [_entry_value(e, "teacher_accuracy") for e in entries]
    student = [_entry_value(e, "student_accuracy") for e in entries]
    if not entries:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(rounds, [np.nan if t is None else t for t in teacher], "o-", label="teacher (served)")
    ax.plot(rounds, [np.nan if s is None else s for s in student], "s--", label="student")
    for e, r, s in zip(entries, rounds, student):
        if _entry_value(e, "promoted") and s is not None:
            ax.scatter([r], [s], s=160, facecolors="none", edgecolors="green", linewidths=2)
            version = _entry_value(e, "version")
            ax.annotate(f"v{version}" if version else "promoted", (r, s), textcoords="offset points",
                        xytext=(4, 8), color="green")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("holdout accuracy")
    ax.set_title("Holdout accuracy over rounds (circles: promoted)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, folder, "accuracy.png")


def plot_confusion(folder: Path, confusion: np.ndarray, class_names: Sequence[str]) -> str | None:
    if confusion is None or np.asarray(confusion).size == 0:
        return None
    cm = np.asarray(confusion, dtype=np.float64)
    n = len(cm)
    fig = _figure(1.5 + 0.45 * max(n, 6), 1.2 + 0.42 * max(n, 6))
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ticks = list(range(n))
    ax.set_xticks(ticks, [str(c) for c in class_names][:n], rotation=45 if n > 10 else 0)
    ax.set_yticks(ticks, [str(c) for c in class_names][:n])
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Student confusion matrix (holdout)")
    return _save(fig, folder, "confusion.png")


def plot_per_class(folder: Path, student: dict, teacher: dict, class_names: Sequence[str]) -> str | None:
    if not student:
        return None
    n = len(next(iter(student.values())))
    x = np.arange(n)
    fig = _figure(max(6.4, 0.6 * n + 2), 4.2)
    ax = fig.add_subplot()
    for k, key in enumerate(("precision", "recall", "f1")):
        if key in student:
            ax.bar(x + (k - 1) * 0.27, student[key], width=0.27, label=f"student {key}")
    if "recall" in teacher:
        ax.scatter(x, teacher["recall"], marker="_", s=300, color="black", label="teacher recall", zorder=3)
    ax.set_xticks(x, [str(c) for c in class_names][:n])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title("Per-class precision / recall / F1 (holdout)")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, folder, "per_class.png")


def plot_confidence(folder: Path, confidences: np.ndarray | None, reasons: np.ndarray | None) -> str | None:
    if confidences is None or len(confidences) == 0:
        return None
    conf = np.asarray(confidences, dtype=np.float64)
    reasons = np.asarray(reasons if reasons is not None else [""] * len(conf)).astype(str)
    fig = _figure()
    ax = fig.add_subplot()
    bins = np.linspace(min(conf.min(), 0.0), 1.0, 31)
    groups = [("accepted", conf[reasons == ""])] + [(f"rejected: {r}", conf[reasons == r]) for r in REJECT_REASONS]
    other = ~np.isin(reasons, ("",) + REJECT_REASONS)
    if other.any():
        groups.append(("rejected: other", conf[other]))
    groups = [(label, values) for label, values in groups if len(values)]
    ax.hist([v for _, v in groups], bins=bins, stacked=True, label=[label for label, _ in groups])
    ax.set_xlabel("teacher confidence on the pool")
    ax.set_ylabel("samples")
    ax.set_title("Pseudo-label confidence: accepted vs rejected")
    ax.legend(fontsize=8)
    return _save(fig, folder, "confidence.png")


def plot_labels(folder: Path, y_lab: np.ndarray | None, pseudo: np.ndarray | None, synthetic_y: np.ndarray | None,
                class_names: Sequence[str], labeled_name: str = "labeled") -> str | None:
    n = len(class_names)
    series = [(labeled_name, y_lab), ("pseudo-labeled", pseudo), ("synthetic", synthetic_y)]
    series = [(name, np.bincount(np.asarray(v, dtype=np.int64), minlength=n)[:n]) for name, v in series
              if v is not None and len(v)]
    if not series:
        return None
    x = np.arange(n)
    width = 0.8 / len(series)
    fig = _figure(max(6.4, 0.6 * n + 2), 4.2)
    ax = fig.add_subplot()
    for k, (name, counts) in enumerate(series):
        share = counts / max(counts.sum(), 1)
        ax.bar(x + (k - (len(series) - 1) / 2) * width, share, width=width, label=f"{name} (n={counts.sum()})")
    ax.set_xticks(x, [str(c) for c in class_names])
    ax.set_ylabel("share of samples")
    ax.set_title("Label distribution")
    ax.legend(fontsize=8)
    return _save(fig, folder, "labels.png")


def plot_embedding(folder: Path, X_lab: np.ndarray | None, X_pool: np.ndarray | None, accepted: np.ndarray | None,
                   seed: int = 0) -> str | None:
    if X_lab is None or X_pool is None or len(X_lab) + len(X_pool) < 3:
        return None
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    lab = np.asarray(X_lab, dtype=np.float32).reshape(len(X_lab), -1)
    pool = np.asarray(X_pool, dtype=np.float32).reshape(len(X_pool), -1)
    mask = np.zeros(len(pool), dtype=bool)
    if accepted is not None and len(accepted):
        mask[np.asarray(accepted, dtype=np.int64)] = True
    keep = np.arange(len(pool))
    if len(pool) > MAX_EMBEDDED_POINTS:
        keep = np.sort(rng.choice(len(pool), MAX_EMBEDDED_POINTS, replace=False))
    both = np.nan_to_num(np.concatenate([lab, pool[keep]]))
    coords = PCA(n_components=2, random_state=seed).fit_transform(both)
    lab_xy, pool_xy = coords[: len(lab)], coords[len(lab):]
    fig = _figure()
    ax = fig.add_subplot()
    acc = mask[keep]
    ax.scatter(*pool_xy[~acc].T, s=6, c="lightgray", label="rejected")
    ax.scatter(*pool_xy[acc].T, s=6, c="tab:blue", alpha=0.6, label="pseudo-labeled")
    ax.scatter(*lab_xy.T, s=22, c="tab:red", marker="x", label="labeled")
    ax.set_title("PCA of the model input: labeled / pseudo-labeled / rejected")
    ax.legend(fontsize=8, markerscale=2)
    return _save(fig, folder, "embedding.png")


def plot_samples(folder: Path, real: np.ndarray | None, generated: np.ndarray | None) -> str | None:
    """Image grid: a row of real samples, then rows of generated ones (when a generator ran)."""
    if real is None or len(real) == 0 or np.asarray(real).ndim != 4:
        return None
    cols = min(10, len(real))
    rows = [("real", np.asarray(real)[:cols])]
    if generated is not None and len(generated):
        gen = np.asarray(generated)
        for start in range(0, min(len(gen), 3 * cols), cols):
            rows.append(("generated", gen[start:start + cols]))
    fig = _figure(1.0 * cols + 1, 1.0 * len(rows) + 0.6)
    for r, (label, images) in enumerate(rows):
        for c in range(cols):
            ax = fig.add_subplot(len(rows), cols, r * cols + c + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(np.asarray(images[c], dtype=np.float32)[0], cmap="gray")
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle("Real vs generated samples" if len(rows) > 1 else "Real samples (no generator this round)")
    return _save(fig, folder, "samples.png")


# ---------------------------------------------------------------------------------------------
# round report and index


def synthetic_verdict(effect: dict | None, offered: int = 0) -> str:
    """One sentence on whether the synthetic samples helped, from RoundResult.synthetic_effect
    (`offered`: how many synthetic samples the generator produced this round)."""
    if not effect:
        if offered:
            return (f"Synthetic samples: {offered} generated but not used for training "
                    "(use_synthetic is off, or the effect was not measured).")
        return "Synthetic samples: not used or not measured this round."
    helped = effect.get("helped")
    with_acc = next((effect[k] for k in ("holdout_accuracy_with", "accuracy_with", "with") if k in effect), None)
    without = next((effect[k] for k in ("holdout_accuracy_without", "accuracy_without", "without") if k in effect), None)
    if helped is None and with_acc is not None and without is not None:
        helped = float(with_acc) > float(without)
    numbers = ""
    if with_acc is not None and without is not None:
        numbers = f" (holdout accuracy {float(with_acc):.4f} with vs {float(without):.4f} without)"
    if helped is None:
        return f"Synthetic samples: effect recorded but undecided: {json.dumps(effect, default=str)}"
    return f"Synthetic samples {'helped' if helped else 'did not help'}{numbers}."


def _json_ready(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_round_report(out_dir: Path, result: object, history: list[dict], *, class_names: Sequence[str],
                       sample_shape: Sequence[int], X_lab_pre: np.ndarray | None, X_pool_pre: np.ndarray | None,
                       y_lab: np.ndarray | None = None, feature_names: Sequence[str] | None = None,
                       version: int | None = None) -> Path:
    """Write `<out_dir>/rounds/<n>/{report.json,report.html,*.png}`; returns report.html's path."""
    round_index = int(_get(result, "round_index"))
    folder = Path(out_dir) / "rounds" / str(round_index)
    folder.mkdir(parents=True, exist_ok=True)
    class_names = [str(c) for c in class_names]
    current = history_entry(result, version)
    entries = [_normalized(e) for e in history if _entry_value(e, "round") != round_index] + [current]
    student_eval, teacher_eval = _get(result, "student_eval"), _get(result, "teacher_eval")
    accepted = np.asarray(_get(result, "accepted_idx", np.zeros(0, np.int64)), dtype=np.int64)
    synthetic = _get(result, "synthetic")
    is_image = len(tuple(sample_shape)) == 3
    real = None
    if is_image and X_lab_pre is not None and len(X_lab_pre):
        if y_lab is not None:  # one real sample per class when we know the labels
            firsts = [int(np.flatnonzero(np.asarray(y_lab) == k)[0]) for k in range(len(class_names))
                      if (np.asarray(y_lab) == k).any()]
            real = np.asarray(X_lab_pre)[firsts]
        else:
            real = np.asarray(X_lab_pre)[:10]
    labeled_y, labeled_name = y_lab, "labeled"
    if labeled_y is None:  # fall back on the holdout's class supports
        support = _per_class(student_eval).get("support")
        if support is not None:
            labeled_y, labeled_name = np.repeat(np.arange(len(support)), support.astype(np.int64)), "holdout"
    plots = [
        ("Holdout accuracy over rounds", plot_accuracy(folder, entries)),
        ("Confusion matrix", plot_confusion(folder, _get(student_eval, "confusion"), class_names)),
        ("Per-class precision / recall / F1", plot_per_class(folder, _per_class(student_eval),
                                                              _per_class(teacher_eval), class_names)),
        ("Pseudo-label confidence", plot_confidence(folder, _get(result, "pool_confidences"),
                                                     _get(result, "rejected_reason"))),
        ("Label distribution", plot_labels(folder, labeled_y, _get(result, "pseudo_labels"),
                                           synthetic[1] if synthetic is not None else None, class_names,
                                           labeled_name)),
        ("2-D embedding (PCA)", plot_embedding(folder, X_lab_pre, X_pool_pre, accepted, seed=round_index)),
    ]
    if is_image:
        plots.append(("Real vs generated samples", plot_samples(folder, real, _get(result, "generated_examples"))))
    plots = [(title, name) for title, name in plots if name]
    summary = result.summary() if hasattr(result, "summary") else {}
    verdict = synthetic_verdict(_get(result, "synthetic_effect"), len(synthetic[1]) if synthetic is not None else 0)
    report = _json_ready({
        "round": round_index, "version": version, "promoted": current["promoted"], "reason": current["reason"],
        "teacher_accuracy": current["teacher_accuracy"], "student_accuracy": current["student_accuracy"],
        "accepted": current["accepted"], "rejected": current["rejected"], "synthetic": verdict,
        "class_names": class_names, "feature_names": list(feature_names) if feature_names is not None else None,
        "sample_shape": list(sample_shape), "plots": [name for _, name in plots], "summary": summary,
        "history": entries,
    })
    _atomic_write(folder / "report.json", json.dumps(report, indent=2, default=str))
    _atomic_write(folder / "report.html", _round_html(report, plots))
    return folder / "report.html"


def _style() -> str:
    return ("<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}img{max-width:100%;border:1px solid #eee}"
            ".ok{color:green}.no{color:#b00}</style>")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (dict, list)):
        return html.escape(json.dumps(value, default=str))
    return html.escape("" if value is None else str(value))


def _round_html(report: dict, plots: list[tuple[str, str]]) -> str:
    esc = html.escape
    outcome = '<span class="ok">promoted</span>' if report["promoted"] else '<span class="no">rejected</span>'
    rows = [("outcome", outcome), ("reason", _fmt(report["reason"])), ("version", _fmt(report["version"])),
            ("teacher holdout accuracy", _fmt(report["teacher_accuracy"])),
            ("student holdout accuracy", _fmt(report["student_accuracy"])),
            ("pseudo-labels accepted", _fmt(report["accepted"])), ("rejected by reason", _fmt(report["rejected"])),
            ("synthetic samples", _fmt(report["synthetic"]))]
    summary = report.get("summary") or {}
    for key in ("threshold", "agreement", "stability", "timings"):
        if key in summary:
            rows.append((key, _fmt(summary[key])))
    if report.get("feature_names"):
        rows.append(("features", _fmt(", ".join(report["feature_names"]))))
    table = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    figures = "".join(f"<h2>{esc(t)}</h2><img src=\"{esc(n)}\" alt=\"{esc(t)}\">" for t, n in plots)
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>Round {report['round']}</title>{_style()}"
            f"</head><body><p><a href=\"../../index.html\">all rounds</a></p><h1>Round {report['round']}</h1>"
            f"<table>{table}</table>{figures}"
            "<p><a href=\"report.json\">report.json</a></p></body></html>")


def write_index(reports_root: Path, *, filename: str = "index.html", title: str = "pseudoserve rounds",
                summary: dict | None = None) -> Path:
    """Write `<root>/<filename>`: an accuracy plot and a table linking every round's report."""
    root = Path(reports_root)
    root.mkdir(parents=True, exist_ok=True)
    reports = []
    for path in (root / "rounds").glob("*/report.json") if (root / "rounds").is_dir() else []:
        if path.parent.name.isdigit():
            try:
                reports.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue  # a round being rewritten; the next index picks it up
    reports.sort(key=lambda r: r["round"])
    esc = html.escape
    plot = plot_accuracy(root, [{k: r.get(k) for k in ("round", "teacher_accuracy", "student_accuracy",
                                                          "promoted", "version")} for r in reports])
    rows = "".join(
        f"<tr><td><a href=\"rounds/{r['round']}/report.html\">{r['round']}</a></td>"
        f"<td>{'promoted' if r['promoted'] else 'rejected'}</td><td>{_fmt(r.get('version'))}</td>"
        f"<td>{_fmt(r.get('teacher_accuracy'))}</td><td>{_fmt(r.get('student_accuracy'))}</td>"
        f"<td>{_fmt(r.get('accepted'))}</td><td>{_fmt(r.get('rejected'))}</td><td>{_fmt(r.get('reason'))}</td></tr>"
        for r in reports)
    extra = ""
    if summary:
        extra = "<h2>Summary</h2><table>" + "".join(
            f"<tr><th>{esc(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in summary.items()) + "</table>"
    body = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>{_style()}</head><body>"
            f"<h1>{esc(title)}</h1>{extra}"
            + (f"<img src=\"{plot}\" alt=\"accuracy over rounds\">" if plot else "<p>No rounds yet.</p>")
            + "<h2>Rounds</h2><table><tr><th>round</th><th>outcome</th><th>version</th><th>teacher acc</th>"
            f"<th>student acc</th><th>accepted</th><th>rejected</th><th>reason</th></tr>{rows}</table></body></html>")
    out = root / filename
    _atomic_write(out, body)
    return out
