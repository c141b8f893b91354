"""The console without a browser: the matrix, the witness drawing, the flow text, and the
pages' authentication (session cookie, cross-site and DNS-rebinding refusals) on a real
SQLite database with a recording switch. The lab drives the same pages in Chromium."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from vfence.controller import auth, matrix, policy
from vfence.controller.console import create_web_app, ofctl, witness
from vfence.controller.flows import OFPP_CONTROLLER

from .. import LOOPBACK
from .test_api import VM, make_service

DOC = {
    "segments": [{"name": "prod", "subnet": "10.0.0.0/8"}],
    "groups": [{"name": g} for g in ("payroll", "frontend", "api", "ops")],
    "vms": [{"name": "api-1", "mac": "00:00:00:00:02:03", "ips": ["10.0.2.31"],
             "segment": "prod", "groups": ["api"]}],
    "rules": [
        {"name": "web-api", "from": "frontend", "to": "api", "protocol": "tcp",
         "ports": "8443", "action": "allow"},
        {"name": "ops-all", "from": "ops", "to": "any", "action": "allow"},
        {"name": "never", "from": "ops", "to": "api", "action": "deny"},
        {"name": "to-one", "from": "frontend", "to": "api-1", "protocol": "udp",
         "ports": "53", "action": "allow"},
        {"name": "probe-log", "from": "frontend", "to": "any", "protocol": "udp",
         "ports": "9000-9099", "action": "deny-and-log"},
        {"name": "mgmt-ssh", "from": "10.9.0.0/16", "to": "payroll", "protocol": "tcp",
         "ports": "22", "action": "allow"},
    ],
    "isolation": [["payroll", "frontend"]],
    "defaults": {"intra_group": "allow", "inter_group": "deny"},
}


@pytest.fixture(scope="module")
def cells():
    pol = policy.parse(DOC)
    groups = list(pol.groups)
    rows = matrix.matrix(pol, groups, {
        "api": [("api-1", "00:00:00:00:02:03", ("10.0.2.31",)),
                ("api-9", "00:00:00:00:02:09", ("10.9.0.9",))],
        "ops": [("ops-1", "00:00:00:00:03:04", ("10.9.0.5",))],
        "payroll": [("pay-1", "00:00:00:00:01:01", ("10.0.1.11",))]})
    return {(c.src, c.dst): c for row in rows for c in row}


def test_the_matrix_reads_the_policy_in_the_compilers_order(cells):
    assert cells["payroll", "frontend"].verdict == cells["frontend", "payroll"].verdict \
        == "isolated"  # above every rule, both ways
    web_api = cells["frontend", "api"]
    assert web_api.verdict == "partly allowed"
    assert web_api.summary == "tcp/8443, to vm api-1: udp/53"
    assert [ln.name for ln in web_api.lines] == ["web-api", "to-one", "probe-log", "default"]
    assert cells["ops", "api"].verdict == "allowed"  # ops-all decides all: never comes too late
    assert [ln.name for ln in cells["ops", "api"].lines] == ["ops-all"]
    assert cells["api", "ops"].verdict == "denied"  # the default between groups
    assert cells["api", "api"].verdict == "allowed"  # the default within one
    assert cells["api", "payroll"].summary == "from cidr 10.9.0.0/16: tcp/22"  # api-9's
    assert [ln.name for ln in cells["payroll", "payroll"].lines] == ["within the group"]
    same = cells["frontend", "frontend"]
    assert same.verdict == "partly allowed" and same.summary == "all but udp/9000-9099"


def test_the_matrix_follows_the_compiler_where_a_review_found_it_did_not():
    """Within a group only the intra-group allow exists: intra_group deny, or a group the
    policy does not define (made by the API), falls to the default between groups; a VM
    in several groups is judged with all of them, which the matrix says."""
    doc = {**DOC, "defaults": {"intra_group": "deny", "inter_group": "allow"},
           "rules": [], "groups": [{"name": g} for g in ("a", "b", "c")],
           "vms": [], "isolation": [["b", "c"]]}
    pol = policy.parse(doc)
    members = {"a": [("v", "00:00:00:00:00:01", ("10.0.0.1",))],
               "b": [("v", "00:00:00:00:00:01", ("10.0.0.1",))],
               "adhoc": [("w", "00:00:00:00:00:02", ("10.0.0.2",))]}
    cells = {(c.src, c.dst): c for row in matrix.matrix(pol, ["a", "b", "c", "adhoc"], members)
             for c in row}
    assert cells["a", "a"].verdict == "allowed"  # the datapath: no intra deny flow exists
    assert [ln.name for ln in cells["a", "a"].lines] == ["default"]
    assert matrix.matrix(policy.parse({**doc, "defaults": {"inter_group": "deny"}}),
                         ["adhoc"], members)[0][0].verdict == "denied"  # not the policy's
    assert matrix.elsewhere(["a", "b", "c"], members) == {"a": ["v"], "b": ["v"], "c": []}


def test_the_witness_is_drawn_as_steps_and_names_a_foreign_flow():
    steps = witness.steps([
        "web-1 sends on hv1 port 5",
        "hv1 table 0 (classify) prio 65000 cookie 0x0 {'in_port': 5}",
        "hv1 table 30 (policy) prio 100 conjunction 7 cookie 0xa500000000000064 "
        "{'reg0': (2, 65535)}",
        "goto to table 40 (forward)",
        "hv1 port 2 -> sp1 port 1",
        "delivered to pay-1 on hv2 port 6",
    ])
    assert [s.kind for s in steps] == ["start", "flow", "flow", "jump", "link", "end"]
    assert [s.switch for s in steps] == ["hv1", "hv1", "hv1", "", "hv1", "hv2"]
    assert steps[1].foreign and not steps[2].foreign
    assert steps[1].detail == "in_port=5" and steps[2].detail == "reg0=2/65535"
    assert "conjunction 7" in steps[2].title and "priority 100" in steps[2].title


def test_flows_read_as_ovs_ofctl_writes_them():
    assert ofctl.match({"in_port": 3, "eth_dst": ["01:80:c2:00:00:00", "ff:ff:ff:ff:ff:f0"]}) \
        == "in_port=3,eth_dst=01:80:c2:00:00:00/ff:ff:ff:ff:ff:f0"
    assert ofctl.match({}) == "any"
    assert ofctl.instructions([["meter", 1], ["apply", [["output", OFPP_CONTROLLER]]]]) \
        == "meter:1 actions=output:CONTROLLER"
    assert ofctl.instructions([["apply", [["set", "reg0", 2]]], ["meta", 1, 0xff],
                               ["goto", 40]]) \
        == "actions=set_field:2->reg0 write_metadata:0x1/0xff goto_table:40"
    assert ofctl.instructions([]) == "drop"


@pytest.fixture
def open_console(sqlite_url):
    service, _ = make_service(sqlite_url)
    client = TestClient(create_web_app(service), base_url=LOOPBACK)
    assert client.post("/v1/vms", json=VM).status_code == 201
    return client


def test_every_page_renders_with_a_strict_content_security_policy(open_console):
    c = open_console
    for path in ("/", "/policy", "/verify", "/trace", "/hosts/hv1", "/console/hosts",
                 "/console/policy"):
        r = c.get(path)
        assert r.status_code == 200, (path, r.text)
        assert "script-src 'self'" in r.headers["content-security-policy"], path
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], path
    assert "pay-1" in c.get("/").text
    r = c.get("/hosts/nowhere")
    assert r.status_code == 404 and "nowhere" in r.text
    assert c.post("/console/verify").status_code == 200


@pytest.mark.parametrize("form, field", [
    ({"destination": "pay-1"}, "source"),
    ({"source": "pay-1", "destination": "pay-1", "port": "70000"}, "port"),
    ({"source": "ghost", "destination": "pay-1"}, "source"),
    ({"source": "pay-1", "destination": "pay-1"}, "source"),  # on no switch port
])
def test_a_bad_trace_question_names_the_field(open_console, form, field):
    r = open_console.post("/console/trace", data=form)
    assert r.status_code in (404, 422), r.text
    assert f"<strong>{field}</strong>" in r.text, r.text


def test_without_a_token_only_loopback_and_no_cross_site_post(sqlite_url):
    service, _ = make_service(sqlite_url)
    app = create_web_app(service)
    rebound = TestClient(app, base_url="http://evil.example:8080")  # DNS rebinding
    r = rebound.get("/v1/vms")
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "header.host"
    assert rebound.get("/").status_code == 403
    local = TestClient(app, base_url=LOOPBACK)
    assert local.get("/v1/vms").status_code == 200
    assert TestClient(app, base_url="http://localhost:8080").get("/v1/vms").status_code == 200
    r = local.post("/v1/vms", json=VM, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "header.origin"
    r = local.post("/v1/vms", json=VM, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    assert local.get("/v1/vms").json() == []  # neither wrote anything
    assert local.post("/v1/vms", json=VM, headers={"Origin": LOOPBACK}).status_code == 201
    assert local.post("/console/verify", headers={"Origin": LOOPBACK}).status_code == 200


TOKEN = "s3cret-token"


@pytest.fixture
def guarded(sqlite_url):
    service, _ = make_service(sqlite_url)
    return TestClient(create_web_app(service, TOKEN), base_url="https://vfence.example")


def test_the_token_form_trades_the_token_for_a_session_cookie(guarded):
    c = guarded
    r = c.get("/policy", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/policy"
    assert c.get("/v1/vms").status_code == 401  # the API answers 401, not the form
    assert c.get("/login").status_code == 200 and c.get("/static/console.css").status_code == 200
    r = c.post("/login", data={"token": "wrong", "next": "/policy"}, follow_redirects=False)
    assert r.status_code == 401 and "not the API token" in r.text and not c.cookies
    r = c.post("/login", data={"token": TOKEN, "next": "/policy"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/policy"
    set_cookie = r.headers["set-cookie"].lower()
    for flag in ("httponly", "samesite=strict", "secure", "path=/", f"max-age={auth.TTL}"):
        assert flag in set_cookie, set_cookie
    assert TOKEN not in r.headers["set-cookie"]
    assert c.get("/policy").status_code == 200
    assert c.get("/v1/vms").status_code == 200  # the event stream and the API take it too
    own = {"Origin": "https://vfence.example"}
    assert c.post("/console/verify", headers=own).status_code == 200
    r = c.post("/v1/vms", json=VM, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403  # a cookie never carries another site's write
    r = c.post("/logout", headers=own, follow_redirects=False)
    assert r.status_code == 303 and not c.cookies.get(auth.COOKIE)
    assert c.get("/v1/vms").status_code == 401


@pytest.mark.parametrize("next_, goes", [
    ("/hosts/hv1", "/hosts/hv1"), ("//evil.example/x", "/"), ("https://evil.example", "/"),
    ("/\\evil.example", "/"),
])
def test_signing_in_goes_to_a_page_of_this_server_only(guarded, next_, goes):
    r = guarded.post("/login", data={"token": TOKEN, "next": next_}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == goes


def test_a_session_expires_cannot_be_forged_and_ends_with_the_token():
    value = auth.new_session(TOKEN, now=1000)
    assert auth.session_ok(value, TOKEN, now=1000 + auth.TTL - 1)
    assert not auth.session_ok(value, TOKEN, now=1000 + auth.TTL + 1)
    assert not auth.session_ok(value, "another-token", now=1000)
    expiry, _, mac = value.partition(".")
    assert not auth.session_ok(f"{int(expiry) + 10**6}.{mac}", TOKEN, now=1000)
    assert not auth.session_ok("", TOKEN) and not auth.session_ok("x.y", TOKEN)


def test_found_by_review_odd_credentials_and_forms_are_refused_not_500(guarded):
    c = guarded
    for name, value in (("authorization", "Bearer \u00e9t\u00e9"),
                        ("cookie", f"{auth.COOKIE}=\u00b2.abc"),
                        ("cookie", f"{auth.COOKIE}=9999999999.\u00e9")):
        r = c.get("/v1/vms", headers=[(name.encode(), value.encode())])
        assert r.status_code == 401, value
    r = c.post("/login", content="token=%C3%A9", headers={
        "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 401
    r = c.post("/login", data={"token": "x" * 100_000})  # read no further than the limit
    assert r.status_code == 401 and "not the API token" in r.text
    c.post("/login", data={"token": TOKEN})
    own = {"Origin": "https://vfence.example"}
    for form, field in (({"source": "a", "destination": "b", "port": "\u00b2"}, "port"),
                        ({"source": "a" * 65, "destination": "b"}, "source"),
                        ({"source": "a", "destination": "b", "protocol": "sctp"}, "protocol")):
        r = c.post("/console/trace", data=form, headers=own)
        assert r.status_code == 422 and f"<strong>{field}</strong>" in r.text, (form, r.text)
    r = c.post("/console/trace", data={"source": "x" * 5000}, headers=own)
    assert r.status_code == 413


def test_found_by_review_an_ended_session_sends_the_whole_page_to_the_form(guarded):
    r = guarded.get("/console/policy", headers={
        "HX-Request": "true", "HX-Current-URL": "https://vfence.example/policy?g=a"})
    assert r.status_code == 401 and r.headers["HX-Redirect"] == "/login?next=/policy%3Fg%3Da"
    r = guarded.get("/login?next=/policy%3Fg%3Da")  # and back to that page after it
    assert 'value="/policy?g=a"' in r.text
    r = guarded.post("/logout", follow_redirects=False)  # with no session: still fine
    assert r.status_code == 303 and r.headers["location"] == "/login"


def test_found_by_review_the_event_stream_ends_with_the_session(sqlite_url):
    service, _ = make_service(sqlite_url)
    c = TestClient(create_web_app(service, TOKEN), base_url=LOOPBACK)
    c.cookies.set(auth.COOKIE, auth.new_session(TOKEN, now=time.time() - auth.TTL + 1))
    with c.stream("GET", "/v1/events/stream") as r:
        assert r.status_code == 200
        started = time.monotonic()
        body = "".join(r.iter_text())  # ends: the session expired about a second later
    assert body.startswith("retry:") and time.monotonic() - started < 10


def test_found_by_review_the_group_picker_is_capped_and_ignores_unknown_groups(open_console):
    picked = "&".join(f"g=g{i}" for i in range(300)) + "&g=payroll&g=prod"
    r = open_console.get(f"/policy?{picked}")
    assert r.status_code == 200
    assert r.text.count('<th scope="row">from ') == 1  # payroll only: g0.. are no groups
    assert "/console/policy?g=payroll" in r.text and "g299" not in r.text.split("<main")[1]
