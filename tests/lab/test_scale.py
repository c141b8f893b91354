"""The scale lab in CI size: ten hypervisors with hundreds of bound VMs (OVS internal
ports) and a real VM on each. Every VM is bound, every switch holds exactly the flows the
controller computed, and live migrations under a 10 ms ping stream converge with the
traffic back. ``python -m bench.scale`` runs the full size (5,000 VMs, 50 moves) and
reports the figures; this asserts outcomes with generous bounds."""

from __future__ import annotations

import subprocess
import time

import pytest

from vfence.mininet_topos.lab import ping_stream_result, start_ping_stream
from vfence.mininet_topos.migration import migrate
from vfence.mininet_topos.scale import ScaleLab, real_vms

from .conftest import ports

HOSTS, BULK = 10, 400
REAL = real_vms(HOSTS)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    of_port, api_port = ports()
    work = tmp_path_factory.mktemp("scale")
    with ScaleLab(HOSTS, BULK, REAL, db_url=f"sqlite:///{work}/vfence.db", workdir=work,
                  of_port=of_port, api_port=api_port) as lab:
        yield lab


def flow_count(bridge: str) -> int:
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-aggregate", bridge],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split("flow_count=")[1].split()[0])


def test_every_vm_is_bound_and_every_switch_holds_what_the_controller_computed(lab):
    vms = lab.get("/v1/vms")
    bound = {v["name"]: v["location"]["host"]["name"] for v in vms if v["location"]}
    assert len(bound) == BULK + HOSTS
    assert bound["b1"] == "hv1" and bound[f"b{BULK}"] == f"hv{(BULK - 1) % HOSTS + 1}"
    hosts = {h["name"]: h for h in lab.get("/v1/hosts")}
    for h in range(1, HOSTS + 1):
        name = f"hv{h}"
        # linear in VMs: every VM of the segment is known on every host (one segment)
        assert hosts[name]["flows"] > BULK * 4, hosts[name]
        assert flow_count(name) == hosts[name]["flows"], name


def test_migrations_at_scale_converge_and_traffic_comes_back(lab, tmp_path):
    """Three moves (one trial each of: to the next host, to a far host, back): each under
    a 10 ms ping stream from a VM on a third host. The stream gets replies before and
    after the move, the outage stays short, the controller recorded its convergence, and
    the old host no longer delivers to the VM."""
    at = {p.name: p.host for p in REAL}
    for p, target in ((REAL[0], 2), (REAL[1], 7), (REAL[0], 1)):
        peer = next(q for q in REAL if at[q.name] not in (at[p.name], target))
        out = tmp_path / f"ping-{p.name}-{target}.txt"
        start_ping_stream(lab.host(peer.name), p.ip, out, 300)
        time.sleep(0.8)  # replies flow before the move (the positive control)
        migrate(lab.net, p, f"hv{target}", remove_old_after=0.5)
        at[p.name] = target
        sent, received = ping_stream_result(out, timeout=30)
        lost_ms = (sent - received) * 10
        assert received > 100 and lost_ms < 2000, (p.name, target, sent, received)
        hist = lab.get(f"/v1/vms/{p.name}/history")
        assert hist[-1]["host"]["name"] == f"hv{target}"
        assert hist[-1]["convergence_ms"] is not None and hist[-1]["convergence_ms"] < 2000
        assert lab.ping(peer.name, p.name)  # and after the stream, still
    hosts = {h["name"]: h for h in lab.get("/v1/hosts")}
    for h in range(1, HOSTS + 1):  # no switch drifted from what the controller holds
        assert flow_count(f"hv{h}") == hosts[f"hv{h}"]["flows"], h
