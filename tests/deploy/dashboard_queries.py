"""The Grafana dashboard's PromQL, ready to run against a plain Prometheus.

Used by tests/deploy/test_dashboard.py (syntax, metric names, coverage) and by
tests/triton/test_dashboard_prometheus.py (every expression returns data from a real Prometheus).
Grafana replaces its variables before sending a query; `concrete` does the same with values that
make sense for a short test run: all models, 1-minute rate windows, a 1-hour range.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[2] / "k8s" / "base" / "dashboards" / "pseudoserve.json"

GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "${model}": ".*",
    "$model": ".*",
}


@dataclass(frozen=True)
class Query:
    panel: str
    ref_id: str
    expr: str

    @property
    def concrete(self) -> str:
        expr = self.expr
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        leftover = re.search(r"\$\{?\w+", expr)
        if leftover:
            raise ValueError(f"panel {self.panel!r} {self.ref_id}: unknown variable {leftover.group(0)}")
        return expr


def load_dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text())


def panels(dashboard: dict) -> list[dict]:
    """Every panel, rows' nested panels included."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def queries(dashboard: dict | None = None) -> list[Query]:
    dashboard = dashboard or load_dashboard()
    found = [Query(p["title"], t["refId"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            if match:  # Grafana runs label_values(expr, label) as a series lookup; its data = expr's
                found.append(Query(f"variable {variable['name']}", "var", match.group(1)))
    return found
