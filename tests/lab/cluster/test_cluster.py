"""A cluster of three controllers on PostgreSQL and OpenFlow roles (issue 13), on the
production-shaped lab: real OVS per host, real member processes, a real database."""

from __future__ import annotations

import collections
import copy
import signal
import threading
import time

import httpx
import pytest

from vfence.mininet_topos.cluster import wait_until
from vfence.mininet_topos.lab import ping_stream_result, start_ping_stream
from vfence.mininet_topos.prodlab import migrate

from .conftest import DOC, IP, SWITCHES

pytestmark = pytest.mark.lab


def roles(lab, switch: str) -> dict[int, tuple[str, bool]]:
    """OpenFlow port of each controller the switch lists -> (its role there, connected),
    as the switch's own OVSDB reports them."""
    out = lab.switch(switch).run("ovs-vsctl", "--format=csv", "--data=bare", "--no-headings",
                                 "--columns=target,role,is_connected", "list", "Controller")
    rows = {}
    for line in out.strip().splitlines():
        target, role, connected = line.split(",")
        rows[int(target.rsplit(":", 1)[1])] = (role, connected == "true")
    return rows


def test_three_members_master_two_switches_each_and_each_switch_knows_one_master(lab):
    masters = lab.masters()
    assert set(masters) == set(SWITCHES)
    assert sorted(collections.Counter(masters.values()).values()) == [2, 2, 2]
    port_of = {name: of for name, (of, _) in lab.ports.items()}
    for switch, member in masters.items():
        # (OVS writes a controller's role into its database every few seconds)
        wait_until(lambda s=switch, m=member: roles(lab, s)[port_of[m]] == ("master", True),
                   15, 0.5)
        seen = roles(lab, switch)
        assert seen[port_of[member]] == ("master", True), (switch, seen)
        others = {p: r for p, r in seen.items() if p != port_of[member] and r[1]}
        assert others and all(r[0] == "slave" for r in others.values()), (switch, seen)
    c = lab.cluster()
    assert {m["name"] for m in c["members"] if m["live"]} == {"c1", "c2", "c3"}
    assert all(s["term"] >= 1 for s in c["switches"])
    # the policy holds across members: allowed across hosts, isolated on one host
    assert lab.ping("web-1", "api-1")
    assert not lab.ping("pay-1", "web-1", tries=1)


def _moved_from(lab, member: str, switches: list[str]) -> bool:
    """Every one of ``switches`` has a valid master other than ``member``."""
    masters = lab.masters()
    return all(masters.get(s) not in (None, member) for s in switches)


def test_sigkill_of_a_master_loses_no_packet_and_its_switches_move_at_once(lab, tmp_path):
    """web-1 (hv1) pings api-1 (hv2) every 10 ms; the master of hv1 is killed. Another
    member masters its switches within a second (the bound here is generous; bench.cluster
    reports the real figure over 10 trials), sends them no flow-mod, and no flow on them
    is replaced (its duration keeps growing)."""
    victim = lab.master_of("hv1")
    mine = sorted(s for s, m in lab.masters().items() if m == victim)
    others = [m for m in lab.live() if m != victim]
    before = {s: lab.flows_of(s) for s in mine}
    mods = {m: lab.metric(m, "vfence_flow_mods_total") for m in others}
    out = tmp_path / "ping.txt"
    start_ping_stream(lab.host("web-1"), IP["api-1"], out, count=300)
    time.sleep(1)
    lab.signal_member(victim, signal.SIGKILL)
    took = wait_until(lambda: _moved_from(lab, victim, mine), 10)
    sent, received = ping_stream_result(out)
    after = {s: lab.flows_of(s) for s in mine}
    try:
        assert took is not None and took < 5, f"takeover: {took}"
        print(f"takeover of {mine} after SIGKILL of {victim}: {took * 1000:.0f} ms")
        assert (sent, received) == (300, 300)
        for s in mine:  # the same flows, none replaced
            assert after[s].keys() == before[s].keys(), s
            for key, (actions, age) in before[s].items():
                assert after[s][key][0] == actions and after[s][key][1] >= age, (s, key)
        assert {m: lab.metric(m, "vfence_flow_mods_total") for m in others} == mods
    finally:
        lab.start_member(victim)
        lab.wait_converged()


def _put_policy(lab, member: str, doc: dict) -> httpx.Response:
    """PUT /v1/policy at a member, as an orchestrator does: again after a 503's
    Retry-After (a switch whose master is changing)."""
    for _ in range(10):
        r = httpx.put(lab.url(member) + "/v1/policy", json=doc, timeout=60)
        if r.status_code != 503:
            return r
        time.sleep(float(r.headers["retry-after"]))
    return r


def _no_drift(lab, member: str) -> list[dict]:
    return [d for d in httpx.get(lab.url(member) + "/v1/drift", timeout=30).json()
            if d["missing"] or d["extra"]]


def test_a_stopped_master_resumes_without_a_write_steps_down_and_rejoins(lab):
    """SIGSTOP the master of hv2; another member takes its switches (after the stopped
    one's heartbeat ages out: 3 s); a policy change is made meanwhile; SIGCONT. The old
    master never writes to a switch: no switch refused it anything (OVS logs each refusal
    of a slave's write) and its flow-mod counter stands still. It rejoins: live again,
    holding its share, its copy at the new version, every switch as compiled."""
    victim = lab.master_of("hv2")
    mine = sorted(s for s, m in lab.masters().items() if m == victim)
    other = next(m for m in lab.live() if m != victim)
    refusals = lab.slave_refusals()
    mods = lab.metric(victim, "vfence_flow_mods_total")
    doc = copy.deepcopy(DOC)
    doc["rules"].insert(0, {"name": "ops-ping-api", "from": "ops", "to": "finance-api",
                            "protocol": "icmp", "action": "allow"})
    assert not lab.ping("ops-1", "api-1", tries=1)  # denied before the change
    lab.signal_member(victim, signal.SIGSTOP)
    try:
        took = wait_until(lambda: _moved_from(lab, victim, mine), 20, 0.1)
        assert took is not None, "no member took the stopped master's switches"
        print(f"takeover of {mine} after SIGSTOP of {victim}: {took * 1000:.0f} ms")
        r = _put_policy(lab, other, doc)
        assert r.status_code == 200, r.text
        assert lab.ping("ops-1", "api-1")  # the change is in force on hv4 and hv2
    finally:
        lab.signal_member(victim, signal.SIGCONT)
    try:
        back = wait_until(lambda: sum(1 for m in lab.masters().values() if m == victim) == 2,
                          30, 0.2)
        assert back is not None, f"{victim} did not rejoin: {lab.masters()}"
        assert lab.slave_refusals() == refusals
        assert lab.metric(victim, "vfence_flow_mods_total") == mods
        c = lab.cluster(victim)
        assert c["my_version"] == c["version"]
        assert _no_drift(lab, victim) == []
        assert lab.ping("ops-1", "api-1") and not lab.ping("pay-1", "web-1", tries=1)
    finally:
        assert _put_policy(lab, other, DOC).status_code == 200


def test_a_fourth_member_takes_its_share_without_a_flow_mod(lab):
    """Three members master six switches, two each; a fourth joins (after its warm-up)
    and takes one switch from a member holding two... (6 over 4: 2, 2, 1, 1), and no
    member sends a single flow-mod for it; no flow on any switch is replaced."""
    assert sorted(collections.Counter(lab.masters().values()).values()) == [2, 2, 2]
    before = {s: lab.flows_of(s) for s in SWITCHES}
    mods = {m: lab.metric(m, "vfence_flow_mods_total") for m in lab.live()}
    lab.start_member("c4")
    try:
        took = wait_until(lambda: sorted(collections.Counter(
            lab.masters().values()).values()) == [1, 1, 2, 2], 30, 0.2)
        assert took is not None, lab.masters()
        masters = lab.masters()
        assert list(masters.values()).count("c4") == 1
        time.sleep(1)  # (a hand-over's read-back and diff)
        assert {m: lab.metric(m, "vfence_flow_mods_total") for m in mods} == mods
        assert lab.metric("c4", "vfence_flow_mods_total") == 0
        for s in SWITCHES:
            after = lab.flows_of(s)
            assert after.keys() == before[s].keys(), s
            assert all(after[k][1] >= age for k, (_, age) in before[s].items()), s
        assert _no_drift(lab, "c4") == []
    finally:
        lab.signal_member("c4", signal.SIGKILL)
        lab.wait_converged()


def test_writes_hammered_at_every_member_through_failovers(lab):
    """Three writers, one per member, each adding and deleting VMs of its own and
    changing the addresses of a VM of the policy (a change every switch of its host
    must acknowledge, through that switch's master), while masters are killed and
    restarted. Every answer is 2xx, a 4xx that says why, or 503 with Retry-After;
    every acknowledged write is there afterwards, on every member; the switches hold
    what is compiled (no drift) and isolation holds (verify)."""
    patched = {"c1": "ops-1", "c2": "api-1", "c3": "pay-2"}
    base = {p["name"]: p["ips"] for p in DOC["vms"]}
    log: dict[str, list[tuple[str, str, object, str | None]]] = {m: [] for m in patched}
    stop = threading.Event()

    def writer(member: str, k: int) -> None:
        client = httpx.Client(base_url=lab.url(member), timeout=30)
        n = 0
        while not stop.is_set():
            name, vm = f"h{k}-{n}", patched[member]
            ips = base[vm] + ([f"10.60.{k}.{n % 250 + 1}"] if n % 2 else [])
            calls = [("add", name, "POST", "/v1/vms", {
                "name": name, "mac": f"02:00:00:00:{k:02x}:{n % 256:02x}",
                "ips": [f"10.50.{k}.{n % 250 + 1}"], "segment": "prod", "groups": ["ops"]})]
            if n % 3 == 0:
                calls.append(("delete", name, "DELETE", f"/v1/vms/{name}", None))
            calls.append(("patch", ",".join(ips), "PATCH", f"/v1/vms/{vm}", {"ips": ips}))
            for op, what, method, path, body in calls:
                try:
                    r = client.request(method, path, json=body)
                    log[member].append((op, what, r.status_code, r.headers.get("retry-after")))
                except httpx.HTTPError as e:
                    log[member].append((op, what, type(e).__name__, None))
                    time.sleep(0.5)  # the member is down: it comes back
            n += 1

    threads = [threading.Thread(target=writer, args=(m, k), daemon=True)
               for k, m in enumerate(patched, start=1)]
    for t in threads:
        t.start()
    try:
        for switch in ("hv4", "hv2"):
            time.sleep(2)
            victim = lab.master_of(switch)
            lab.signal_member(victim, signal.SIGKILL)
            time.sleep(2)
            lab.start_member(victim)
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    lab.wait_converged()
    try:
        statuses = collections.Counter(e[2] for entries in log.values() for e in entries)
        print("hammer:", dict(statuses))
        allowed = {200, 201, 204, 404, 409, 503, "ConnectError", "RemoteProtocolError",
                   "ReadError"}
        assert set(statuses) <= allowed, statuses
        assert all(e[3] is not None for es in log.values() for e in es if e[2] == 503)
        assert statuses[201] > 10 and statuses[200] > 10  # (positive control)
        for member in patched:
            vms = {v["name"]: v for v in httpx.get(lab.url(member) + "/v1/vms",
                                                   timeout=30).json()}
            for other, entries in log.items():
                added = {w for op, w, st, _ in entries if op == "add" and st == 201}
                deleted = {w for op, w, st, _ in entries if op == "delete" and st == 204}
                unknown = {w for op, w, st, _ in entries if isinstance(st, str)}
                assert added - deleted - unknown <= set(vms), (member, other)
                assert not (deleted - unknown) & set(vms), (member, other)
                patches = [(w, st) for op, w, st, _ in entries if op == "patch"]
                acked = [w for w, st in patches if st == 200]
                tail = [w for w, st in patches[patches.index((acked[-1], 200)):]]
                ips = ",".join(vms[patched[other]]["ips"])
                assert ips == acked[-1] or ips in tail, (member, other, ips, acked[-1])
            assert _no_drift(lab, member) == []
        verdicts = httpx.post(lab.api + "/v1/verify", timeout=60).json()
        assert verdicts and all(v["status"] == "isolated" for v in verdicts)
    finally:
        assert _put_policy(lab, "c1", DOC).status_code == 200
        for entries in log.values():
            for name in {w for op, w, st, _ in entries if op == "add"}:
                httpx.delete(lab.api + f"/v1/vms/{name}", timeout=30)


def test_a_migration_while_its_target_hosts_master_dies(lab, tmp_path):
    """web-2 (frontend) moves hv4 -> hv1, where pay-1 (payroll, isolated from frontend)
    runs. The move is announced at a member that does not master hv1, and hv1's master
    is killed as the move starts. The VM gets there; payroll never receives a packet from
    or to it on the way (both pay-1 on the target and pay-2 elsewhere); its own group's
    traffic comes back; the switches hold what is compiled and isolation is proved."""
    victim = lab.master_of("hv1")
    at = next(m for m in lab.live() if m != victim)
    r = httpx.post(lab.url(at) + "/v1/vms/web-2/migrations", json={"target_host": "hv1"},
                   timeout=30)
    assert r.status_code == 202, r.text
    start_ping_stream(lab.host("web-1"), IP["web-2"], tmp_path / "peer.txt", 600)
    start_ping_stream(lab.host("pay-1"), IP["web-2"], tmp_path / "iso-local.txt", 600)
    start_ping_stream(lab.host("pay-2"), IP["web-2"], tmp_path / "iso-far.txt", 600)
    time.sleep(1)
    lab.signal_member(victim, signal.SIGKILL)
    try:
        migrate(lab, "web-2", "hv1")
        moved = wait_until(lambda: (lab.get("/v1/vms/web-2/location") or {}).get(
            "host", {}).get("name") == "hv1", 20, 0.1)
        assert moved is not None, lab.get("/v1/vms/web-2/location")
        print(f"web-2 bound on hv1 {moved * 1000:.0f} ms after the move began")
        sent, got = ping_stream_result(tmp_path / "peer.txt")
        assert got > 0 and sent - got <= 300, (sent, got)  # (bench: the real figure)
        for stream in ("iso-local.txt", "iso-far.txt"):
            assert ping_stream_result(tmp_path / stream)[1] == 0, stream  # never one
        assert lab.ping("web-1", "web-2") and not lab.ping("pay-1", "web-2", tries=1)
        for member in lab.live():
            assert _no_drift(lab, member) == [], member
        verdicts = httpx.post(lab.url(at) + "/v1/verify", timeout=60).json()
        assert verdicts and all(v["status"] == "isolated" for v in verdicts)
    finally:
        lab.start_member(victim)
        lab.wait_converged()
