"""Benchmark: how fast the outside world finds a moved VM (issue 12).

    python -m bench.external [--moves 10]

The production-shaped lab (3 hypervisors, 2 fabric switches, one OVS each in its own
namespace) with mininet_topos/external.py's uplink network: FRR 8.4 peers with vfence
and routes to an external client. Router r1 joins web and db and reaches the outside
through each host's uplink. web-1 moves back and forth between hv1 and hv2; for each move:

- BGP: from the switch-over to FRR's kernel route for web-1's /32 pointing at the new
  host (goal < 100 ms; FRR itself adds about 60 ms: 50 ms in bgpd, 10 in zebra);
- the baseline, in the same move: from the switch-over to the controller's confirmation
  of the move (its location API shows the new host);
- outages, as lost pings x 10 ms: from the external client (north-south) and from web-2,
  a VM of web on hv3 (east-west).

Prints a table; asserts nothing. Needs root, OVS and FRR.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from vfence.mininet_topos import external as ext
from vfence.mininet_topos.datacenter import VMPlan
from vfence.mininet_topos.lab import ping_stream_result, start_ping_stream
from vfence.mininet_topos.prodlab import ProdLab, migrate

PING = 0.01
VMS = [VMPlan("web-1", 1, "web", "00:00:00:00:0f:01", "10.40.1.11", ("web",), prefix=24),
       VMPlan("web-2", 3, "web", "00:00:00:00:0f:02", "10.40.1.12", ("web",), prefix=24),
       VMPlan("db-1", 2, "db", "00:00:00:00:0f:03", "10.40.2.11", ("db",), prefix=24)]


def document() -> dict:
    return {
        "segments": [{"name": "web", "subnet": "10.40.1.0/24", "gateway": "10.40.1.1"},
                     {"name": "db", "subnet": "10.40.2.0/24", "gateway": "10.40.2.1"}],
        "routers": [{"name": "r1", "segments": ["web", "db"], "external": "dc"}],
        "external": [{"name": "dc", "subnet": ext.SUBNET, "gateway": ext.GATEWAY,
                      "bgp": {"local_asn": ext.LOCAL_ASN, "peer": ext.GATEWAY,
                              "peer_asn": ext.ROUTER_ASN}}],
        "hosts": [{"name": f"hv{h}", "uplink": f"up{h}", "address": ext.host_address(h)}
                  for h in (1, 2, 3)],
        "groups": [{"name": "web"}, {"name": "db"}],
        "vms": [{"name": p.name, "mac": p.mac, "ips": [p.ip], "segment": p.segment,
                 "groups": list(p.groups)} for p in VMS],
        "rules": [{"name": "client-in", "from": ext.CLIENT_NET, "to": "web",
                   "action": "allow"}],
        "defaults": {"intra_group": "allow", "inter_group": "deny"},
    }


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def one_move(lab: ProdLab, net: ext.ExternalNet, target: int, tmp: Path, i: int
             ) -> tuple[float, float, int, int]:
    """(BGP ms, confirmation ms, north-south lost, east-west lost) of one move."""
    ip, hop = VMS[0].ip, ext.host_address(target)
    seen: dict[str, float] = {}

    def watch() -> None:
        end = time.monotonic() + 15
        while time.monotonic() < end and len(seen) < 2:
            if "bgp" not in seen and net.route_via(ip) == hop:
                seen["bgp"] = time.monotonic()
            if "api" not in seen and lab.get("/v1/vms/web-1/location")["host"]["name"] \
                    == f"hv{target}":
                seen["api"] = time.monotonic()
            time.sleep(0.002)

    ns_out, ew_out = tmp / f"ns-{i}.txt", tmp / f"ew-{i}.txt"
    stream = net.client_popen(f"ping -n -i {PING} -W 1 -c 300 {ip}", ns_out)
    start_ping_stream(lab.host("web-2"), ip, ew_out, 300, PING)
    time.sleep(0.5)
    watcher = threading.Thread(target=watch)
    watcher.start()
    m = migrate(lab, "web-1", f"hv{target}", remove_old_after=0.5)
    watcher.join()
    stream.wait(timeout=30)
    ns_sent, ns_got = ping_stream_result(ns_out)
    ew_sent, ew_got = ping_stream_result(ew_out)
    nan = float("nan")
    return ((seen.get("bgp", nan) - m.switched) * 1000, (seen.get("api", nan) - m.switched)
            * 1000, ns_sent - ns_got, ew_sent - ew_got)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--moves", type=int, default=10)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vfence-bench-external-"))
    with ProdLab(3, 2, VMS, db_url=f"sqlite:///{tmp}/db.sqlite", workdir=tmp, of_port=6698,
                 api_port=8098, policy=document()) as lab:
        net = ext.ExternalNet().start()
        try:
            for h in (1, 2, 3):
                sw = lab.switch(f"hv{h}")
                net.attach(sw.netns, h, sw.attach)
            for p in VMS:
                lab.host(p.name).cmd(f"ip route replace default via {p.ip.rsplit('.', 1)[0]}.1")
            lab.wait_for(lambda: net.route_via(VMS[0].ip) == ext.host_address(1), 60,
                         "FRR's route to web-1")
            lab.wait_for(lambda: len(httpx.get(lab.api + "/v1/external", timeout=10).json()[0][
                "gateway_macs"]) == 3, 30, "every uplink's gateway")
            rows = [one_move(lab, net, 2 if i % 2 == 0 else 1, tmp, i)
                    for i in range(args.moves)]
        finally:
            net.stop()
    bgp, api = [r[0] for r in rows], [r[1] for r in rows]
    ns, ew = [r[2] * PING * 1000 for r in rows], [r[3] * PING * 1000 for r in rows]
    print(f"{args.moves} moves of web-1 between hv1 and hv2, FRR 8.4 as the external router")
    print("| from the switch-over | median | p99 | max |")
    print("|---|---|---|---|")
    for name, xs in (("FRR's kernel route at the new host (goal < 100 ms)", bgp),
                     ("baseline: the controller confirms the move", api),
                     ("north-south outage (client's 10 ms pings)", ns),
                     ("east-west outage (web-2's 10 ms pings)", ew)):
        print(f"| {name} | {statistics.median(xs):.0f} ms | {pct(xs, 0.99):.0f} ms | "
              f"{max(xs):.0f} ms |")


if __name__ == "__main__":
    main()
