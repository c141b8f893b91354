"""The Grafana dashboard (docs/grafana/vfence.json) against a real Prometheus (Debian's)
scraping the lab's /metrics every second: after a live migration there and back, a
deny-and-log sample and some API calls, every panel's query returns data, and the
panels that watch those events show them (Grafana itself cannot run here)."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from vfence.mininet_topos.prodlab import migrate

from ..conftest import probe
from .conftest import IP

DASHBOARD = Path(__file__).resolve().parents[3] / "docs" / "grafana" / "vfence.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prometheus(lab, tmp_path_factory):
    work = tmp_path_factory.mktemp("prometheus")
    api = urlparse(lab.api)
    (work / "prometheus.yml").write_text(json.dumps({  # (YAML takes JSON)
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "vfence",
                            "static_configs": [{"targets": [api.netloc]}]}]}))
    url = f"http://127.0.0.1:{_free_port()}"
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={work / 'prometheus.yml'}",
         f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address={url[7:]}",
         "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=(work / "log").open("w"))
    try:
        lab.wait_for(lambda: _up(url), 30, "Prometheus scraping the lab")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _up(url: str) -> bool:
    try:
        targets = httpx.get(url + "/api/v1/targets", timeout=2).json()["data"]["activeTargets"]
    except (httpx.HTTPError, KeyError, ValueError):
        return False
    return bool(targets) and targets[0]["health"] == "up"


def _query(url: str, expr: str) -> list[dict]:
    r = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert r["status"] == "success", (expr, r)
    return r["data"]["result"]


def test_every_panel_returns_data_and_shows_the_labs_events(lab, prometheus):
    panels = json.loads(DASHBOARD.read_text())["panels"]
    for target in ("hv2", "hv3"):  # app-1 there and back: two moves to converge
        migrate(lab, "app-1", target)
    got = probe(lab.host("web-1"), [("udp", IP["api-1"], 9000)])  # probe-log: deny-and-log
    assert got == {("udp", IP["api-1"], 9000): False}
    assert probe(lab.host("web-1"), [("tcp", IP["api-1"], 8443)])[
        ("tcp", IP["api-1"], 8443)]  # the control: web-to-api
    for _ in range(5):
        httpx.get(lab.api + "/v1/vms", timeout=30).raise_for_status()
    lab.wait_for(lambda: _query(prometheus, "vfence_denied_samples_total"), 15,
                 "the denied sample scraped")
    time.sleep(3)  # a few scrapes after it all
    results = {}
    for p in panels:
        for t in p["targets"]:
            expr = t["expr"].replace("$__rate_interval", "1m")
            results[(p["title"], t["refId"])] = rows = _query(prometheus, expr)
            assert rows, f"panel {p['title']!r} ({t['refId']}) returned no data: {expr}"
    value = {k: [float(r["value"][1]) for r in rows] for k, rows in results.items()}
    assert all(math.isfinite(v) and v > 0
               for v in value[("Move convergence (detection to last barrier)", "A")])
    assert value[("VM moves followed", "A")][0] > 0
    denied = results[("Denied samples by rule (deny-and-log)", "A")]
    assert any(r["metric"].get("rule") == "probe-log" and float(r["value"][1]) > 0
               for r in denied), denied
    assert value[("Switches connected", "A")] == [5.0]
    tables = {r["metric"]["table_name"] for r in results[("Flows per table", "A")]}
    assert {"classify", "policy", "forward"} <= tables, tables
