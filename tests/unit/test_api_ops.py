"""Operator-facing API: auth, metrics, host flows, events, migrations; schemathesis over
the served OpenAPI spec; the CLI against a real HTTP server."""

from __future__ import annotations

import copy
import json
import logging
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import pytest
import schemathesis
import uvicorn
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from vfence.controller.api import create_app
from vfence.controller.service import Interface

from .. import LOOPBACK
from .test_api import VM, make_service

TOKEN = "s3cret-token-value"


@pytest.fixture
def service(sqlite_url):
    return make_service(sqlite_url)[0]


def test_token_required_when_configured(service, caplog):
    caplog.set_level(logging.DEBUG)
    client = TestClient(create_app(service, token=TOKEN), base_url=LOOPBACK)
    r = client.get("/v1/vms")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["errors"][0]["field"] == "header.authorization"
    assert client.get("/v1/vms", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v1/vms", headers={"Authorization": TOKEN}).status_code == 401
    ok = client.get("/v1/vms", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert client.get("/v1/health").status_code == 200  # probes need no token
    assert TOKEN not in caplog.text


def test_metrics_scrape(service):
    client = TestClient(create_app(service), base_url=LOOPBACK)
    client.post("/v1/vms", json=VM)
    service.ovsdb_snapshot([Interface(0x101, 3, "hv1-eth3", VM["mac"], None)])
    reads: list[tuple] = []
    switch = service.switches.programmer
    real = switch.read_flows
    switch.read_flows = lambda dpid, *how: reads.append(how) or real(dpid, *how)
    text = client.get("/metrics").text
    # the switch sends only the flows counted (rules, pairs, table 0's guards), not all
    assert reads and all(how and how[1] is not None for how in reads), reads
    assert "vfence_switches_connected 1.0" in text
    assert 'vfence_flow_mods_total{switch="hv1"}' in text
    assert 'vfence_flows{switch="hv1",table="0",table_name="classify"}' in text
    assert 'vfence_rule_packets{rule="anti-spoofing"} 91.0' in text  # 13 drop flows x 7
    assert 'vfence_api_request_seconds_count{method="POST",route="/v1/vms",status="201"} 1.0' \
        in text


def test_host_flows_read_from_the_switch(service):
    client = TestClient(create_app(service), base_url=LOOPBACK)
    client.post("/v1/vms", json=VM)
    service.ovsdb_snapshot([Interface(0x101, 3, "hv1-eth3", VM["mac"], None)])
    flows = client.get("/v1/hosts/hv1/flows").json()
    assert flows and all(f["packets"] == 7 for f in flows)
    assert {f["owner"].split(":")[0] for f in flows} >= {"base", "vm", "policy"}
    same = client.get("/v1/hosts/0000000000000101/flows").json()
    assert same == flows
    r = client.get("/v1/hosts/nope/flows")
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "host"


def test_events_filter_and_page(service):
    client = TestClient(create_app(service), base_url=LOOPBACK)
    for i in range(3):
        client.post("/v1/vms", json={**VM, "name": f"v{i}", "mac": f"00:00:00:00:0a:0{i}",
                                     "ips": [f"10.1.0.{i + 1}"]})
    added = client.get("/v1/events", params={"type": "vm-added"}).json()
    assert [e["vm"] for e in added] == ["v0", "v1", "v2"]
    page = client.get("/v1/events", params={"type": "vm-added", "limit": 1, "offset": 1}).json()
    assert [e["vm"] for e in page] == ["v1"]
    assert client.get("/v1/events", params={"vm": "v2"}).json()[0]["type"] == "vm-added"
    assert client.get("/v1/events", params={"limit": 0}).status_code == 422


def test_migration_announcement(service):
    client = TestClient(create_app(service), base_url=LOOPBACK)
    client.post("/v1/vms", json=VM)
    r = client.post("/v1/vms/pay-1/migrations", json={"target_host": "hv1"})
    assert r.status_code == 202 and r.json() == {"vm": "pay-1", "target_host": "hv1",
                                                 "state": "prepared"}
    r = client.post("/v1/vms/pay-1/migrations", json={"target_host": "hv9"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "target_host"
    assert client.post("/v1/vms/ghost/migrations", json={"target_host": "hv1"}).status_code \
        == 404


# schemathesis loads the spec at import (pytest 9 breaks its from_fixture): a real app on
# a throw-away SQLite file, with one (recording) switch connected
_SCHEMA_DB = tempfile.mkdtemp(prefix="vfence-schemathesis-")


def _on_loopback(app):
    """The app as a client on loopback reaches it (Host 127.0.0.1: no token needed)."""
    async def asgi(scope, receive, send):
        if scope["type"] == "http":
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"]
                                          if k != b"host"] + [(b"host", b"127.0.0.1")]}
        await app(scope, receive, send)
    return asgi


schema = schemathesis.openapi.from_asgi("/openapi.json", _on_loopback(
    create_app(make_service(f"sqlite:///{_SCHEMA_DB}/db.sqlite")[0]))
).exclude(path="/v1/events/stream")  # never ends: test_the_event_stream_* below


@schema.parametrize()
# derandomize: CI reruns the same examples (reproducible); run with a random seed
# locally to look for more (it found the /v1/events offset overflow that way)
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_api_conforms_to_its_spec_and_never_5xx(case):
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text)
    # semantic rules a schema cannot state (multicast MAC, 0.0.0.0, taken names) answer 422
    # to some schema-valid bodies by design; every other check applies
    case.validate_response(response, excluded_checks=[positive_data_acceptance])


# --- CLI against a live server --------------------------------------------------------------


@pytest.fixture
def live_api(sqlite_url):
    service, _ = make_service(sqlite_url)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port,
                                           log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(url + "/v1/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url, service
    server.should_exit = True
    t.join(5)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vfence", *args], capture_output=True,
                          text=True, timeout=60)


def test_cli_vm_lifecycle_json_and_exit_codes(live_api):
    url, service = live_api
    r = cli("vm", "add", "pay-1", "--mac", VM["mac"], "--segment", "prod", "--ip", "10.0.0.11",
            "--group", "payroll", "--api", url)
    assert r.returncode == 0, r.stderr
    r = cli("vm", "list", "--json", "--api", url)
    assert r.returncode == 0 and json.loads(r.stdout)[0]["name"] == "pay-1"
    r = cli("vm", "add", "pay-2", "--mac", VM["mac"], "--segment", "prod", "--api", url)
    assert r.returncode == 1 and "mac" in r.stderr and "409" in r.stderr
    service.ovsdb_snapshot([Interface(0x101, 3, "hv1-eth3", VM["mac"], None)])
    r = cli("vm", "where", "pay-1", "--json", "--api", url)
    assert json.loads(r.stdout)["port"]["name"] == "hv1-eth3"
    r = cli("vm", "history", "pay-1", "--json", "--api", url)
    assert json.loads(r.stdout)[0]["how"] == "ovsdb"
    r = cli("host", "list", "--json", "--api", url)
    assert json.loads(r.stdout)[0]["name"] == "hv1"
    r = cli("host", "flows", "hv1", "--table", "0", "--json", "--api", url)
    assert r.returncode == 0 and all(f["table"] == 0 for f in json.loads(r.stdout))
    r = cli("events", "--type", "vm-bound", "--json", "--api", url)
    assert json.loads(r.stdout.splitlines()[0])["vm"] == "pay-1"
    r = cli("vm", "readdress", "pay-1", "--ip", "10.0.0.31", "--ip", "fd00::31", "--api", url)
    assert r.returncode == 0 and "10.0.0.31" in r.stdout, r.stderr
    assert service.state.vms["pay-1"].ips == ("10.0.0.31", "fd00::31")
    r = cli("vm", "readdress", "pay-1", "--api", url)  # nothing to change: refused
    assert r.returncode == 1 and "give ips, segment or both" in r.stderr
    assert cli("vm", "rm", "pay-1", "--api", url).returncode == 0
    assert cli("vm", "show", "pay-1", "--api", url).returncode == 1
    assert cli("vm", "list", "--api", "http://127.0.0.1:1").returncode == 1  # unreachable


def test_cli_policy_check_and_apply(live_api, tmp_path):
    url, _ = live_api
    from pathlib import Path
    finance = Path(__file__).parents[2] / "mininet_topos" / "finance.yaml"
    r = cli("policy", "check", str(finance), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["rules"] == 5
    bad = tmp_path / "bad.yaml"
    bad.write_text(finance.read_text().replace('ports: "8443"', 'ports: "8443-80"'))
    r = cli("policy", "check", str(bad))
    assert r.returncode == 1 and "rules[0].ports" in r.stderr
    r = cli("policy", "apply", str(finance), "--dry-run", "--json", "--api", url)
    assert r.returncode == 0 and json.loads(r.stdout)["dry_run"] is True
    assert httpx.get(url + "/v1/vms").json() == []  # dry run wrote nothing
    r = cli("policy", "apply", str(finance), "--json", "--api", url)
    assert r.returncode == 0 and len(json.loads(r.stdout)["vms"]["added"]) == 6
    assert cli("policy", "show", "--api", url).returncode == 0


def test_cli_usage_errors_exit_2():
    assert cli("vm", "add").returncode == 2
    assert cli("serve", "--ofp-port", "0").returncode == 2
    r = cli("serve", "--api-host", "0.0.0.0", "--db", "sqlite:///:memory:")
    assert r.returncode == 2 and "VFENCE_API_TOKEN" in r.stderr
    assert cli("policy", "check", "/nonexistent.yaml").returncode == 1


def test_segments_groups_rules(service):
    client = TestClient(create_app(service), base_url=LOOPBACK)
    from pathlib import Path

    import yaml
    doc = yaml.safe_load((Path(__file__).parents[2] / "mininet_topos" / "finance.yaml")
                         .read_text())
    assert client.put("/v1/policy", json=doc).status_code == 200
    assert client.get("/v1/segments").json()[0] == {
        "name": "prod", "subnet": "10.0.0.0/8", "id": 1, "tag": 1, "subnet6": None,
        "gateway": None, "gateway6": None, "router": None, "dhcp": None}
    gs = {g["name"]: g["bit"] for g in client.get("/v1/groups").json()}
    assert set(gs) == {"payroll", "frontend", "finance-api", "ops"}
    assert len(set(gs.values())) == 4
    rules = client.get("/v1/rules").json()
    assert rules[0] == {"index": 0, "priority": 58976, "name": "web-to-api", "from": "frontend",
                        "to": "finance-api", "protocol": "tcp", "ports": [[8443, 8443]],
                        "action": "allow"}


def test_json_logs_carry_vm_context():
    from vfence.controller.cli import JsonFormatter
    rec = logging.LogRecord("vfence.service", logging.INFO, __file__, 1, "vm-moved %s", ("a",),
                            None)
    rec.vm, rec.host = "a", "hv2"
    out = json.loads(JsonFormatter().format(rec))
    assert out["msg"] == "vm-moved a" and out["vm"] == "a" and out["host"] == "hv2"


def test_migrations_list_and_host_ports(service):
    client = TestClient(create_app(service), base_url=LOOPBACK)
    client.post("/v1/vms", json=VM)
    service.ovsdb_snapshot([Interface(0x101, 3, "hv1-eth3", VM["mac"], None)])
    assert client.get("/v1/vms/pay-1/migrations").json() == []
    service.ports_changed(0x101, {1: "hv1-eth1"})  # the port goes: no move, unbound
    service.ports_changed(0x101, {1: "hv1-eth1", 4: "hv1-eth4"})
    service.ovsdb_snapshot([Interface(0x101, 4, "hv1-eth4", VM["mac"], None)])
    (move,) = client.get("/v1/vms/pay-1/migrations").json()
    assert move["source"]["name"] == move["target"]["name"] == "hv1" and move["how"] == "ovsdb"
    (host,) = client.get("/v1/hosts").json()
    assert host["ports"] == [{"number": 1, "name": "hv1-eth1"}, {"number": 4, "name": "hv1-eth4"}]
    assert client.get("/v1/vms/ghost/migrations").status_code == 404


ISOLATED_PAIR = {
    "segments": [{"name": "prod"}], "groups": [{"name": "payroll"}, {"name": "frontend"}],
    "vms": [{"name": "pay-1", "mac": "00:00:00:00:01:01", "segment": "prod",
             "groups": ["payroll"]},
            {"name": "web-1", "mac": "00:00:00:00:01:02", "segment": "prod",
             "groups": ["frontend"]}],
    "isolation": [["payroll", "frontend"]]}


@pytest.mark.parametrize("hv1_flows, status, code", [
    ([], "isolated", 0),  # every frame dropped
    ([((), (("apply", (("output", 4),)),))], "broken", 1),
    ([((), (("actions3", (("output", 4),)),))], "unknown", 2),  # write-actions: not modelled
])
def test_cli_verify_exit_codes_and_the_api_status(live_api, hv1_flows, status, code):
    """pay-1 on hv1 port 3, web-1 on port 4; hv1 holds exactly ``hv1_flows``."""
    from vfence.controller.flows import Flow

    url, service = live_api
    service.apply_policy(ISOLATED_PAIR)
    service.ports_changed(0x101, {1: "hv1-eth1", 3: "hv1-eth3", 4: "hv1-eth4"})
    service.ovsdb_snapshot([Interface(0x101, 3, "hv1-eth3", "00:00:00:00:01:01", None),
                            Interface(0x101, 4, "hv1-eth4", "00:00:00:00:01:02", None)])
    service.switches.programmer.flows = {0x101: [Flow(0, 100, m, ins, 0) for m, ins in hv1_flows]}
    (v,) = httpx.post(url + "/v1/verify").json()
    assert (v["status"], v["isolated"]) == (status, status == "isolated")
    assert (v["reason"] is not None) == (status == "unknown")
    r = cli("verify", "--api", url)
    assert r.returncode == code, (r.stdout, r.stderr)
    if status == "unknown":
        out = " ".join(r.stdout.split())  # rich wraps long lines
        assert "UNKNOWN" in out and "'actions3' is not modelled" in out


def test_trace_over_the_api_and_the_cli_names_the_isolation_pair(live_api):
    """POST /v1/trace and `vfence trace` over the flows the (fake) switch holds: web-1 ->
    pay-1 is dropped by the pair; a question about nobody is 404 naming the field."""
    url, service = live_api
    doc = copy.deepcopy(ISOLATED_PAIR)
    for vm, ip in zip(doc["vms"], ("10.0.0.1", "10.0.0.2"), strict=True):
        vm["ips"] = [ip]
    service.apply_policy(doc)
    service.ports_changed(0x101, {1: "hv1-eth1", 3: "hv1-eth3", 4: "hv1-eth4"})
    service.ovsdb_snapshot([Interface(0x101, 3, "hv1-eth3", "00:00:00:00:01:01", None),
                            Interface(0x101, 4, "hv1-eth4", "00:00:00:00:01:02", None)])
    body = {"source": "web-1", "destination": "pay-1", "protocol": "icmp"}
    r = httpx.post(url + "/v1/trace", json=body)
    assert r.status_code == 200, r.text
    t = r.json()
    assert t["verdict"] == "dropped" and t["reason"].startswith("isolation pair payroll/frontend")
    assert t["hops"][0]["switch"] == "hv1" and t["hops"][-1]["band"] == "isolation"
    out = cli("trace", "web-1", "pay-1", "--proto", "icmp", "--api", url)
    assert out.returncode == 1 and "isolation pair payroll/frontend" in out.stdout, out
    r = httpx.post(url + "/v1/trace", json={**body, "source": "ghost"})
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "source", r.text
    r = httpx.post(url + "/v1/trace", json={**body, "protocol": "tcp"})  # tcp needs a port
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "port", r.text


def _sse(lines) -> dict:
    """The next event from a server-sent event stream's lines (comments skipped)."""
    event: dict = {}
    for line in lines:
        if not line:
            if "data" in event:
                return event
            continue
        key, _, value = line.partition(": ")
        if key in ("id", "event", "data"):
            event[key] = value
    raise AssertionError("the stream ended")


def test_the_event_stream_sends_new_events_live_and_resumes_after_last_event_id(live_api):
    """GET /v1/events/stream: an event recorded after the stream opened arrives at once
    (a VM registered over REST); filtered by type; Last-Event-ID replays what came after
    it; without a token where one is set: 401 (the stream is not an open path)."""
    url, _service = live_api
    with httpx.stream("GET", url + "/v1/events/stream", params={"type": "vm-added"},
                      timeout=10) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith(
            "text/event-stream")
        lines = r.iter_lines()
        t0 = time.monotonic()
        assert httpx.post(url + "/v1/vms", json=VM, timeout=10).status_code == 201
        e = _sse(lines)
        took = time.monotonic() - t0
    body = json.loads(e["data"])
    assert e["event"] == "vm-added" and body["vm"] == VM["name"] and int(e["id"]) == body["id"]
    assert took < 5, took  # (polled every 0.2 s)
    with httpx.stream("GET", url + "/v1/events/stream", timeout=10,
                      headers={"Last-Event-ID": str(body["id"] - 1)}) as r:
        again = _sse(r.iter_lines())
    assert int(again["id"]) == body["id"]  # resumed right after the id it was given
    r = httpx.get(url + "/v1/events/stream", headers={"Last-Event-ID": "x"}, timeout=10)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "header.last-event-id"


def test_the_event_stream_needs_the_token_when_one_is_set(sqlite_url):
    client = TestClient(create_app(make_service(sqlite_url)[0], token="t0ken"), base_url=LOOPBACK)
    r = client.get("/v1/events/stream")
    assert r.status_code == 401
