"""Benchmark: how fast DNS follows a VM (issue 12's "dig returns the new address within
1 s of the PATCH").

    python -m bench.dns [--vms 2000] [--moves 50]

A real BIND 9 (mininet_topos/named.py) on loopback with TSIG-keyed zones, vfence's
updater (controller/dns_updates.py) on its own thread over a SQLite database:

- the first sync: every VM's A and PTR records (and TXT markers), from nothing;
- a re-addressed VM: from the state change (the updater kicked, as the controller does
  after every change) to the server answering the new address, per move;
- the baseline, in the same run: one hand-made RFC 2136 update with the same key over
  TCP, answered (what the server and dnspython cost alone).

Prints a table; asserts nothing. Needs bind9 (make deps installs it).
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import statistics
import tempfile
import time
from pathlib import Path

import dns.query
import dns.tsig
import dns.update

from vfence.controller import policy
from vfence.controller.dns_updates import Updater
from vfence.controller.metrics import Metrics
from vfence.controller.model import VM, NetworkState
from vfence.controller.store import db
from vfence.mininet_topos.named import KEY_NAME, Named

ZONE = "vms.bench.example"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state(named: Named, n: int) -> NetworkState:
    doc = {"segments": [{"name": "web", "subnet": "10.64.0.0/16"}],
           "dns": {"server": "127.0.0.1", "port": named.port, "zone": ZONE, "reverse": True,
                   "tsig": {"name": KEY_NAME, "secret_file": str(named.key_file)}}}
    vms = {f"vm{i}": VM(i, f"vm{i}", f"02:00:00:00:{i >> 8:02x}:{i & 0xFF:02x}",
                        (f"10.64.{i >> 8}.{i & 0xFF}",), 1, "web") for i in range(1, n + 1)}
    return NetworkState(policy=policy.parse(doc), vms=vms)


def _pct(xs: list[float], p: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(len(xs) * p))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=2000)
    ap.add_argument("--moves", type=int, default=50)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vfence-bench-dns-"))
    named = Named(work / "named", "127.0.0.1", _port(),
                  [ZONE, "64.10.in-addr.arpa"]).start()
    try:
        engine = db.make_engine(f"sqlite:///{work}/vfence.db")
        db.upgrade(engine)
        box = {"state": _state(named, args.vms)}
        updater = Updater(db.sessions(engine), lambda: box["state"], Metrics())
        t0 = time.perf_counter()
        assert updater.round(), updater.status()
        first = time.perf_counter() - t0
        updater.start()
        moves: list[float] = []
        for k in range(args.moves):
            i = 1 + k % args.vms
            vm = box["state"].vms[f"vm{i}"]
            new_ip = f"10.64.{200 + k % 50}.{1 + k // 50}"
            st = dataclasses.replace(box["state"], vms=dict(box["state"].vms))
            st.vms[vm.name] = dataclasses.replace(vm, ips=(new_ip,))
            t0 = time.perf_counter()
            box["state"] = st
            updater.kick()
            while named.query(f"{vm.name}.{ZONE}", "A") != [new_ip]:
                time.sleep(0.001)
            moves.append(time.perf_counter() - t0)
        updater.close()
        key = dns.tsig.Key(KEY_NAME, named.secret, "hmac-sha256")
        raw: list[float] = []
        for k in range(args.moves):
            u = dns.update.UpdateMessage(ZONE, keyring=key)
            u.replace(f"raw{k}.{ZONE}.", 30, "A", "10.64.250.1")
            t0 = time.perf_counter()
            dns.query.tcp(u, "127.0.0.1", port=named.port, timeout=2)
            raw.append(time.perf_counter() - t0)
    finally:
        named.kill()
    rows = [("re-addressed VM: kick to the server's answer", moves),
            ("baseline: one hand-made update, answered", raw)]
    print(f"first sync of {args.vms} VMs (A + PTR, each name with vfence's TXT marker: "
          f"{4 * args.vms} RRsets): {first:.2f} s ({4 * args.vms / first:.0f} RRsets/s)")
    print(f"{'':48} {'median':>9} {'p99':>9}   (goal < 1000 ms)")
    for what, xs in rows:
        print(f"{what:48} {statistics.median(xs) * 1000:7.1f}ms {_pct(xs, .99) * 1000:7.1f}ms")


if __name__ == "__main__":
    main()
