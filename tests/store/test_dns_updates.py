"""DNS follows the VMs, against a real BIND 9 on loopback with TSIG: records appear,
change and go with the VMs; with the server killed nothing else waits, the pending
updates are kept in the database and land when it is back; a wrong key is an error
that names the zone."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from vfence.controller import dns as plan_mod
from vfence.controller.api import create_app
from vfence.controller.dns_updates import Updater
from vfence.controller.store import models as m
from vfence.mininet_topos.named import Named

from .. import LOOPBACK
from ..unit.test_api import make_service

ZONE, REV, REV6 = "vms.example", "0.30.10.in-addr.arpa", \
    "0.0.0.0.0.0.0.0.0.3.0.0.0.0.d.f.ip6.arpa"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def named(tmp_path: Path) -> Iterator[Named]:
    server = Named(tmp_path / "named", "127.0.0.1", _port(), [ZONE, REV, REV6]).start()
    yield server
    server.kill()


def _doc(named: Named, **dns: object) -> dict:
    return {
        "segments": [{"name": "web", "subnet": "10.30.0.0/24", "subnet6": "fd00:30::/64"},
                     {"name": "dr", "subnet": "10.31.0.0/24"}],
        "vms": [{"name": "web-1", "mac": "02:00:00:00:30:01", "segment": "web",
                 "ips": ["10.30.0.5", "fd00:30::5", "fe80::1"]},
                {"name": "web-2", "mac": "02:00:00:00:30:02", "segment": "web",
                 "ips": ["10.30.0.6"]}],
        "dns": {"server": "127.0.0.1", "port": named.port, "zone": ZONE + ".",
                "reverse": True, "ttl": 30,
                "tsig": {"name": KEY, "secret_file": str(named.key_file)}} | dns,
    }


KEY = "vfence-key"


@pytest.fixture
def env(sqlite_url, named):
    service, _ = make_service(sqlite_url)
    client = TestClient(create_app(service), base_url=LOOPBACK)
    updater = Updater(service.sessions, lambda: service.state, service.metrics)
    service.external_status = lambda: {"dns": updater.status()}
    r = client.put("/v1/policy", json=_doc(named))
    assert r.status_code == 200, r.text
    return client, service, updater, named


def _rows(service) -> set[tuple[str, str, str]]:
    with service.sessions() as s:
        return {(r.owner, r.rtype, r.value) for r in s.scalars(select(m.DnsRecord))}


def test_records_follow_create_readdress_and_delete(env):
    client, service, updater, named = env
    assert updater.round() is True
    assert named.query(f"web-1.{ZONE}", "A") == ["10.30.0.5"]
    assert named.query(f"web-1.{ZONE}", "AAAA") == ["fd00:30::5"]  # no link-local
    assert named.query("5.0.30.10.in-addr.arpa", "PTR") == [f"web-1.{ZONE}."]
    assert named.query("5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0." + REV6, "PTR") == [f"web-1.{ZONE}."]
    assert (f"web-2.{ZONE}.", "A", "10.30.0.6") in _rows(service)
    st = client.get("/v1/dns").json()
    assert st["state"] == "current" and st["pending"] == 0 and st["key"] == KEY + "."
    assert st["zone"] == ZONE + "." and st["last_success"] is not None
    # a move across subnets: the new address, the old PTR gone
    r = client.patch("/v1/vms/web-1", json={"segment": "dr", "ips": ["10.31.0.9"]})
    assert r.status_code == 200, r.text
    assert updater.round() is False  # one zone is missing on the server (below)
    assert named.query(f"web-1.{ZONE}", "A") == ["10.31.0.9"]
    assert named.query(f"web-1.{ZONE}", "AAAA") == []
    assert named.query("5.0.30.10.in-addr.arpa", "PTR") == []
    st = updater.status()  # the server has no zone for 10.31.0.0/24: the rest landed,
    # that zone is reported and retried
    assert st["state"] == "failing" and "NOTAUTH" in st["last_error"] and "31.10" in \
        st["last_error"] and st["pending"] == 2  # the PTR and vfence's marker there
    # deleting a VM removes its names
    assert client.delete("/v1/vms/web-2").status_code == 204
    updater.round()
    assert named.query(f"web-2.{ZONE}", "A") == []
    assert named.query("6.0.30.10.in-addr.arpa", "PTR") == []
    assert not any(o.startswith("web-2") for o, _, _ in _rows(service))


def test_a_dead_server_blocks_nothing_and_catches_up(env):
    client, service, updater, named = env
    updater.round()
    named.kill()
    t0 = time.monotonic()
    r = client.patch("/v1/vms/web-2", json={"ips": ["10.30.0.7"]})
    assert r.status_code == 200 and time.monotonic() - t0 < 5, r.text  # no DNS on this path
    assert updater.round() is False
    st = updater.status()
    # web-2's A, the old PTR's removal and the new PTR (each PTR with its marker)
    assert st["state"] == "failing" and st["pending"] == 5, st
    assert set(st["pending_names"]) == {f"web-2.{ZONE}.", "6.0.30.10.in-addr.arpa.",
                                        "7.0.30.10.in-addr.arpa."}
    assert ("web-2.vms.example.", "A", "10.30.0.6") in _rows(service)  # not taken: kept
    (e,) = client.get("/v1/events", params={"type": "dns-failed"}).json()
    assert e["detail"]["pending"] == 5 and "ConnectionRefused" in e["detail"]["error"]
    assert "vfence_dns_pending 5.0" in client.get("/metrics").text
    # the pending work is in the database: a new updater (a restart) finds it
    fresh = Updater(service.sessions, lambda: service.state, service.metrics)
    named.start()
    assert fresh.round() is True
    assert named.query(f"web-2.{ZONE}", "A") == ["10.30.0.7"]
    assert named.query("6.0.30.10.in-addr.arpa", "PTR") == []
    assert named.query("7.0.30.10.in-addr.arpa", "PTR") == [f"web-2.{ZONE}."]
    assert named.query(f"web-1.{ZONE}", "A") == ["10.30.0.5"]  # survived the kill


def test_the_thread_retries_with_backoff_until_the_server_is_back(env):
    _, service, updater, named = env
    named.kill()
    updater.start()
    try:
        updater.kick()
        deadline = time.monotonic() + 10
        while updater.status()["state"] != "failing" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert updater.status()["next_retry_in_s"] is not None
        named.start()
        deadline = time.monotonic() + 15  # retries at 1, 2, 4 s ...
        while named.query(f"web-1.{ZONE}", "A") == [] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert named.query(f"web-1.{ZONE}", "A") == ["10.30.0.5"]
    finally:
        updater.close()


def test_a_wrong_key_is_refused_by_the_server_and_reported(env, tmp_path):
    client, service, updater, named = env
    wrong = tmp_path / "wrong.key"
    wrong.write_text("c2VjcmV0LXRoYXQtdGhlLXNlcnZlci1kb2VzLW5vdC1rbm93Cg==\n")
    doc = _doc(named, tsig={"name": KEY, "secret_file": str(wrong)})
    assert client.put("/v1/policy", json=doc).status_code == 200
    assert updater.round() is False
    assert "TSIG signature" in updater.status()["last_error"]
    assert named.query(f"web-1.{ZONE}", "A") == []


@pytest.mark.parametrize("content, words", [
    (None, "cannot read"),
    ("not base64 at all!\n", "not base64"),
    ('key "k" { algorithm hmac-sha256; secret "%%%"; };', "not base64"),
])
def test_an_unusable_key_file_is_refused_naming_the_field(env, tmp_path, content, words):
    client, service, _, named = env
    path = tmp_path / "bad.key"
    if content is not None:
        path.write_text(content)
    before = client.get("/v1/policy").json()
    r = client.put("/v1/policy", json=_doc(named, tsig={"name": KEY,
                                                        "secret_file": str(path)}))
    assert r.status_code == 422
    (err,) = r.json()["errors"]
    assert err["field"] == "dns.tsig.secret_file" and words in err["reason"], err
    assert client.get("/v1/policy").json() == before


def _server_add(named: Named, owner: str, *records: tuple[str, str]) -> None:
    """Records put on the server by someone else (or by vfence, its answer lost)."""
    import dns.query
    import dns.tsig
    import dns.update

    own = dns.update.UpdateMessage(ZONE, keyring=dns.tsig.Key(KEY, named.secret))
    for rtype, value in records:
        own.add(owner, 60, rtype, value)
    dns.query.tcp(own, "127.0.0.1", port=named.port, timeout=2)


def test_a_name_in_use_on_the_server_is_never_joined_nor_deleted(env):
    """The zone's own host 'ns', and a VM named 'ns': the VM gets no records there (its
    address would have joined the host's, even the same address claimed and later
    deleted), the error names it, the other VMs' records still go; deleting the VM
    leaves the host's address."""
    client, service, updater, named = env
    _server_add(named, f"ns.{ZONE}.", ("A", "10.30.0.53"))
    vms = [{"name": "ns", "mac": "02:00:00:00:30:09", "segment": "web", "ips": ["10.30.0.53"]},
           {"name": "web-3", "mac": "02:00:00:00:30:0a", "segment": "web",
            "ips": ["10.30.0.10"]}]
    for vm in vms:
        assert client.post("/v1/vms", json=vm).status_code == 201
    assert updater.round() is False
    status = client.get("/v1/dns").json()
    assert status["state"] == "failing" and f"ns.{ZONE}. is in use on the server and not " \
        "vfence's" in status["last_error"], status
    assert status["pending"] == 2 and status["pending_names"] == [f"ns.{ZONE}."], status
    assert named.query(f"ns.{ZONE}", "A") == ["10.30.0.53"]  # the host's, alone
    assert named.query(f"ns.{ZONE}", "TXT") == []
    assert named.query(f"web-3.{ZONE}", "A") == ["10.30.0.10"]  # the others went
    assert named.query("10.0.30.10.in-addr.arpa", "PTR") == [f"web-3.{ZONE}."]
    assert not {r for r in _rows(service) if r[0] == f"ns.{ZONE}."}
    assert client.delete("/v1/vms/ns").status_code == 204
    assert updater.round() is True
    assert named.query(f"ns.{ZONE}", "A") == ["10.30.0.53"]  # the zone's own host stays


def test_a_claim_whose_answer_was_lost_is_taken_up_again(env):
    """vfence's first records at a name landed but the answer was lost (the database
    has nothing): the next round's claim finds the name in use, with vfence's marker,
    and completes as a reclaim."""
    from vfence.controller import dns as plan_mod

    client, service, updater, named = env
    assert updater.round() is True
    _server_add(named, f"web-4.{ZONE}.", ("A", "10.30.0.12"), ("TXT", plan_mod.MARKER))
    vm = {"name": "web-4", "mac": "02:00:00:00:30:0b", "segment": "web",
          "ips": ["10.30.0.12"]}
    assert client.post("/v1/vms", json=vm).status_code == 201
    assert updater.round() is True, client.get("/v1/dns").json()
    assert named.query(f"web-4.{ZONE}", "A") == ["10.30.0.12"]
    assert (f"web-4.{ZONE}.", "A", "10.30.0.12") in _rows(service)


def test_dropping_the_server_removes_vfences_records_from_it(env):
    """The document drops its dns section: vfence's records on that server are deleted
    with the settings they were made with (the zone's own host stays), an event says so;
    the database forgets them."""
    client, service, updater, named = env
    _server_add(named, f"ns.{ZONE}.", ("A", "10.30.0.53"))
    assert updater.round() is True
    assert named.query(f"web-1.{ZONE}", "A") == ["10.30.0.5"]  # the control
    doc = _doc(named)
    del doc["dns"]
    assert client.put("/v1/policy", json=doc).status_code == 200
    assert updater.round() is True
    assert named.query(f"web-1.{ZONE}", "A") == [] and named.query(f"web-1.{ZONE}", "TXT") == []
    assert named.query("5.0.30.10.in-addr.arpa", "PTR") == []
    assert named.query(f"ns.{ZONE}", "A") == ["10.30.0.53"]
    (e,) = client.get("/v1/events", params={"type": "dns-left"}).json()
    assert e["detail"]["not_removed"] == 0 and e["detail"]["error"] is None, e
    assert _rows(service) == set()


def _lose_answer(monkeypatch, owner: str) -> dict:
    """The next update of the forward zone naming ``owner`` reaches the server, which
    applies it; its answer is lost (a timeout)."""
    import dns.exception
    import dns.query

    real, state = dns.query.tcp, {"lost": 0}

    def tcp(message, *args, **kw):
        answer = real(message, *args, **kw)
        text = message.to_text()
        if not state["lost"] and owner in text and f";ZONE\n{ZONE}. IN SOA" in text:
            state["lost"] += 1
            raise dns.exception.Timeout()
        return answer
    monkeypatch.setattr(dns.query, "tcp", tcp)
    return state


@pytest.mark.parametrize("then", ["readdress", "delete"])
def test_a_lost_answer_is_mended_whatever_comes_next(env, monkeypatch, then):
    """Found by review: an update applied whose answer was lost, then the VM changes (or
    goes) before the retry. The names it touched are replaced whole next time (vfence's
    marker proves them its own), so nothing it added stays behind."""
    client, service, updater, named = env
    assert updater.round() is True
    vm = {"name": "web-4", "mac": "02:00:00:00:30:0b", "segment": "web", "ips": ["10.30.0.12"]}
    assert client.post("/v1/vms", json=vm).status_code == 201
    lost = _lose_answer(monkeypatch, "web-4")
    assert updater.round() is False and lost["lost"] == 1
    assert named.query(f"web-4.{ZONE}", "A") == ["10.30.0.12"]  # it landed
    if then == "readdress":
        assert client.patch("/v1/vms/web-4", json={"ips": ["10.30.0.13"]}).status_code == 200
    else:
        assert client.delete("/v1/vms/web-4").status_code == 204
    assert updater.round() is True
    want = ["10.30.0.13"] if then == "readdress" else []
    assert named.query(f"web-4.{ZONE}", "A") == want
    assert named.query("12.0.30.10.in-addr.arpa", "PTR") == []
    assert named.query(f"web-4.{ZONE}", "TXT") == ([plan_mod.MARKER] if want else [])
    assert named.query(f"web-1.{ZONE}", "A") == ["10.30.0.5"]  # the others untouched
    assert client.get("/v1/dns").json()["state"] == "current"


def test_a_lost_delete_then_the_same_vm_again_is_put_back(env, monkeypatch):
    client, service, updater, named = env
    assert updater.round() is True
    assert client.delete("/v1/vms/web-2").status_code == 204
    _lose_answer(monkeypatch, "web-2")
    assert updater.round() is False
    vm = {"name": "web-2", "mac": "02:00:00:00:30:02", "segment": "web", "ips": ["10.30.0.6"]}
    assert client.post("/v1/vms", json=vm).status_code == 201
    assert updater.round() is True
    assert named.query(f"web-2.{ZONE}", "A") == ["10.30.0.6"]
    assert named.query("6.0.30.10.in-addr.arpa", "PTR") == [f"web-2.{ZONE}."]


def test_another_vfences_names_are_not_taken_over(env):
    """Found by review: two deployments sharing a zone and key. The other one's name
    ('app', its marker naming owner 'dr-site') is in use and not this one's: this VM named
    'app' gets no records there, and deleting it takes nothing of the other's."""
    from vfence.controller.model import Dns

    client, service, updater, named = env
    theirs = plan_mod.marker(Dns("", "", owner="dr-site"))
    assert theirs != plan_mod.MARKER
    _server_add(named, f"app.{ZONE}.", ("A", "10.30.0.77"), ("TXT", theirs))
    vm = {"name": "app", "mac": "02:00:00:00:30:0c", "segment": "web", "ips": ["10.30.0.77"]}
    assert client.post("/v1/vms", json=vm).status_code == 201
    assert updater.round() is False
    assert f"app.{ZONE}. is in use on the server and not vfence's" in \
        client.get("/v1/dns").json()["last_error"]
    assert client.delete("/v1/vms/app").status_code == 204
    assert updater.round() is True
    assert named.query(f"app.{ZONE}", "A") == ["10.30.0.77"]
    assert named.query(f"app.{ZONE}", "TXT") == [theirs]


def test_a_zone_the_server_no_longer_serves_is_let_go(env):
    """Found by review: the document moves to another zone on the same server, whose
    operator replaced the old zone by the new one. The deletions in the old zone (NOTAUTH:
    nothing can be there) are forgotten, not retried forever; the new zone's land."""
    client, service, updater, named = env
    assert updater.round() is True
    named.kill()
    named.zones = ["vms2.example", REV, REV6]
    named.write()
    named.start()
    assert client.put("/v1/policy", json=_doc(named, zone="vms2.example.")).status_code == 200
    assert updater.round() is True, client.get("/v1/dns").json()
    assert named.query("web-1.vms2.example", "A") == ["10.30.0.5"]
    assert client.get("/v1/dns").json()["state"] == "current"
    assert not any(o.endswith(f".{ZONE}.") for o, _, _ in _rows(service))


def test_a_zone_refusing_every_name_costs_a_few_messages_a_round(env, monkeypatch):
    """Found by review: a key the zone's policy refuses everywhere (REFUSED) used to send
    every name alone, every round. After a few names refused alike, the rest wait; the
    error says it looks like the zone's."""
    client, service, updater, named = env
    named.kill()
    conf = named.dir / "named.conf"
    conf.write_text(conf.read_text().replace(
        f'zone "{ZONE}" {{ type primary; file "{named.dir}/{ZONE}.zone"; '
        f'allow-update {{ key "{KEY}"; }}; }};',
        f'zone "{ZONE}" {{ type primary; file "{named.dir}/{ZONE}.zone"; '
        'allow-update { none; }; };'))
    assert "allow-update { none; }" in conf.read_text()
    named.start()
    doc = _doc(named, reverse=False)
    doc["vms"] = [{"name": f"vm-{i}", "mac": f"02:00:00:00:01:{i:02x}", "segment": "web",
                   "ips": [f"10.30.0.{i + 2}"]} for i in range(40)]
    assert client.put("/v1/policy", json=doc).status_code == 200
    import dns.query

    real, sent = dns.query.tcp, []
    monkeypatch.setattr(dns.query, "tcp", lambda *a, **k: sent.append(1) or real(*a, **k))
    assert updater.round() is False
    assert len(sent) == 1 + 3, len(sent)  # the batch, then three names alone
    status = client.get("/v1/dns").json()
    assert status["last_error"] == f"the server answered REFUSED for zone {ZONE}.: for " \
        "each of 3 names tried alone, as for the zone", status
    assert status["pending"] == 80  # 40 names, A and marker each
