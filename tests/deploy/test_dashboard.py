"""The Grafana dashboard: well-formed, on a `${datasource}` Prometheus variable, covering what an
operator must see, using only the metric names and labels that docs/architecture.md promises,
and (with promtool from Debian's prometheus package) syntactically valid PromQL.

Whether every expression returns data from the real processes is tests/triton/test_dashboard_prometheus.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import ROOT
from tests.deploy.dashboard_queries import load_dashboard, panels, queries

METRIC = re.compile(r"\bpseudoserve_[a-z_]+\b")
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "le"}


def contract() -> tuple[dict[str, set[str]], set[str]]:
    """Metric name -> labels, and the set of histograms, from docs/architecture.md's Metrics section."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("### Metrics"):]
    section = section[: section.index("\n### ", 5)] if "\n### " in section[5:] else section
    labels: dict[str, set[str]] = {}
    histograms: set[str] = set()
    for line in section.splitlines():
        for segment in line.split(";"):
            for name, label_list in re.findall(r"`(pseudoserve_[a-z_]+)(?:\{([a-z_,]*)\})?`", segment):
                labels[name] = set(filter(None, (label_list or "").split(",")))
                if "histogram" in segment:
                    histograms.add(name)
    return labels, histograms


def test_contract_parses() -> None:
    labels, histograms = contract()
    assert "pseudoserve_requests_total" in labels and labels["pseudoserve_requests_total"] == {"model", "version", "outcome"}
    assert {"pseudoserve_request_duration_seconds", "pseudoserve_trainer_round_duration_seconds",
            "pseudoserve_prediction_confidence", "pseudoserve_batch_size"} <= histograms


def test_structure() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels(dashboard):
        assert panel["title"]
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"panel {panel['title']!r}: say what it shows"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip()


def test_only_contract_metrics_and_labels() -> None:
    labels, histograms = contract()
    for query in queries():
        names = set(METRIC.findall(query.expr))
        assert names, f"{query.panel}: no pseudoserve metric"
        allowed_labels = {"le"}
        for name in names:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if base != name:
                assert base in histograms, f"{query.panel}: {name} but {base} is not a histogram in the contract"
            else:
                assert name in labels, f"{query.panel}: {name} is not in docs/architecture.md"
                assert name not in histograms, f"{query.panel}: use {name}_bucket/_sum/_count"
            allowed_labels |= labels[base]
        used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", query.expr))
        for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", query.expr):
            used |= {label.strip() for label in clause.split(",") if label.strip()}
        assert used <= allowed_labels, f"{query.panel}: labels {sorted(used - allowed_labels)} not on {sorted(names)}"
        if "_bucket" in query.expr and "histogram_quantile" in query.expr:
            for clause in re.findall(r"sum\s+by\s*\(([^)]*)\)", query.expr):
                assert "le" in clause, f"{query.panel}: histogram_quantile needs `le` kept"


REQUIRED = {
    "request rate": r"rate\(pseudoserve_requests_total\{",
    "error rate": r'pseudoserve_requests_total\{[^}]*outcome!="success"',
    "latency p50": r"histogram_quantile\(0\.5,.*pseudoserve_request_duration_seconds_bucket",
    "latency p95": r"histogram_quantile\(0\.95,.*pseudoserve_request_duration_seconds_bucket",
    "latency p99": r"histogram_quantile\(0\.99,.*pseudoserve_request_duration_seconds_bucket",
    "batch size": r"pseudoserve_batch_size_",
    "confidence over time": r"pseudoserve_prediction_confidence_bucket",
    "captured traffic": r"pseudoserve_capture_records_total",
    "dropped traffic": r"pseudoserve_capture_dropped_total",
    "pool sizes": r"pseudoserve_trainer_samples\b",
    "pseudo-labels accepted": r"pseudoserve_trainer_pseudo_labels_accepted_total",
    "pseudo-labels rejected": r"pseudoserve_trainer_pseudo_labels_rejected_total",
    "holdout accuracy per version": r"by \(version\) \(pseudoserve_trainer_holdout_accuracy\)",
    "active version": r"pseudoserve_trainer_active_version",
    "round duration": r"pseudoserve_trainer_round_duration_seconds_",
}


@pytest.mark.parametrize("topic", sorted(REQUIRED))
def test_covers(topic: str) -> None:
    assert any(re.search(REQUIRED[topic], q.expr) for q in queries()), f"no panel shows {topic}"


def test_confidence_is_a_heatmap() -> None:
    heatmaps = [p for p in panels(load_dashboard()) if p["type"] == "heatmap"]
    assert any("pseudoserve_prediction_confidence_bucket" in t["expr"] and t.get("format") == "heatmap"
               for p in heatmaps for t in p["targets"])


def test_promql_syntax(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found: `make prometheus` installs Debian's prometheus package, which ships it")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": q.concrete} for i, q in enumerate(queries())]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool, "check", "rules", str(path)], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    path.write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": [{"record": "x:y", "expr": "sum by (le (rate(x[1m]))"}]}]}))
    bad = subprocess.run([promtool, "check", "rules", str(path)], check=False, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0, "promtool must reject broken PromQL"
