"""Writes docs/grafana/vfence.json, the Grafana dashboard for vfence's Prometheus metrics
(``python -m docs.grafana.gen_dashboard > docs/grafana/vfence.json``). Every panel's
query is in PANELS, which the lab test evaluates against a real Prometheus scraping the
lab (tests/lab/prod/test_dashboards.py): each must return data."""

from __future__ import annotations

import json

DATASOURCE = {"type": "prometheus", "uid": "vfence-prometheus"}
RATE = "$__rate_interval"

# title, unit, [(legend, PromQL)], width
PANELS: list[tuple[str, str, list[tuple[str, str]], int]] = [
    ("Switches connected", "short", [("switches", "vfence_switches_connected")], 6),
    ("VM moves followed", "short", [
        ("moves / s", f"rate(vfence_vm_moves_total[{RATE}])")], 6),
    ("Move convergence (detection to last barrier)", "s", [
        ("p50", "histogram_quantile(0.5, sum by (le) "
                f"(rate(vfence_convergence_seconds_bucket[{RATE}])))"),
        ("p99", "histogram_quantile(0.99, sum by (le) "
                f"(rate(vfence_convergence_seconds_bucket[{RATE}])))")], 12),
    ("Flows per table", "short", [("{{table_name}}", "sum by (table_name) (vfence_flows)")], 12),
    ("Flows per switch", "short", [("{{switch}}", "sum by (switch) (vfence_flows)")], 12),
    ("Packet-ins by reason", "pps", [
        ("{{reason}}", f"sum by (reason) (rate(vfence_packet_in_total[{RATE}]))")], 12),
    ("Denied samples by rule (deny-and-log)", "pps", [
        ("{{rule}}", f"sum by (rule) (rate(vfence_denied_samples_total[{RATE}]))")], 12),
    ("API latency p99 by route", "s", [
        ("{{method}} {{route}}", "histogram_quantile(0.99, sum by (le, method, route) "
                                 f"(rate(vfence_api_request_seconds_bucket[{RATE}])))")], 12),
    ("Packets per rule", "short", [("{{rule}}", "sum by (rule) (vfence_rule_packets)")], 12),
    ("Flow-mods sent", "ops", [
        ("{{switch}}", f"sum by (switch) (rate(vfence_flow_mods_total[{RATE}]))")], 12),
]


def dashboard() -> dict:
    panels, x, y = [], 0, 0
    for i, (title, unit, targets, width) in enumerate(PANELS, start=1):
        if x + width > 24:
            x, y = 0, y + 8
        panels.append({
            "id": i, "type": "stat" if width == 6 else "timeseries", "title": title,
            "datasource": DATASOURCE, "gridPos": {"h": 8, "w": width, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(ord("A") + k), "datasource": DATASOURCE, "expr": expr,
                         "legendFormat": legend} for k, (legend, expr) in enumerate(targets)]})
        x += width
    return {"uid": "vfence", "title": "vfence", "tags": ["vfence", "openflow"],
            "timezone": "browser", "schemaVersion": 38, "version": 1, "refresh": "10s",
            "time": {"from": "now-1h", "to": "now"}, "panels": panels,
            "templating": {"list": []}, "annotations": {"list": []}}


if __name__ == "__main__":
    print(json.dumps(dashboard(), indent=1))
