"""Benchmark: how soon a cluster replaces a killed master, against a restarted lone one.

    python -m bench.cluster [--trials 10]

The production-shaped lab (4 hypervisors, 2 fabric switches) with three members on a
throw-away PostgreSQL server. Each trial: web-1 (hv1) pings api-1 (hv2) every 10 ms, the
master of hv1 gets SIGKILL, and the takeover time is from the kill to the last of its
switches accepting a new master's role request (the surviving members' log lines
"master of ... in term N", millisecond timestamps on this machine's clock). Also counted:
pings lost, and the flow-mods the survivors sent (the goal is 0). The killed member is
restarted and the cluster settles (each member two switches) before the next trial.

Then SIGSTOP instead of SIGKILL (a hung master: the others wait for its heartbeat to age
out, MEMBER_TTL = 3 s). The baseline: the same lab with one controller (no cluster),
killed and started again at once (as a supervisor would): the time until every switch is
programmed again. Prints a table; asserts nothing. Needs root, OVS and PostgreSQL.
"""

from __future__ import annotations

import argparse
import collections
import re
import signal
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

from vfence.mininet_topos.cluster import ClusterLab, wait_until
from vfence.mininet_topos.datacenter import FINANCE_POLICY, plan_from_policy
from vfence.mininet_topos.lab import ping_stream_result, start_ping_stream
from vfence.mininet_topos.pgserver import fresh_database, throwaway_postgres
from vfence.mininet_topos.prodlab import ProdLab

DOC = yaml.safe_load(FINANCE_POLICY.read_text())
PLAN = plan_from_policy(DOC, {"pay-1": 1, "web-1": 1, "api-1": 2, "pay-2": 3, "web-2": 4,
                              "ops-1": 4})
API1 = next(p.ip for p in PLAN if p.name == "api-1")
MASTER_LINE = re.compile(r"^(\S+ \S+) INFO vfence\.member: master of ([0-9a-f]{16}) in term")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def masters_since(workdir: Path, since: float) -> dict[str, float]:
    """dpid -> when (epoch seconds) a member last became its master after ``since``."""
    out: dict[str, float] = {}
    for log in workdir.glob("c*.log"):
        for line in log.read_text(errors="replace").splitlines():
            m = MASTER_LINE.match(line)
            if m:
                at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if at >= since:
                    out[m.group(2)] = max(out.get(m.group(2), 0.0), at)
    return out


def balanced(lab: ClusterLab) -> bool:
    return sorted(collections.Counter(lab.masters().values()).values()) == [2, 2, 2]


def trial(lab: ClusterLab, tmp: Path, i: int, sig: int) -> tuple[float, int, float]:
    """(takeover ms, pings lost, survivors' flow-mods) of one failure of hv1's master."""
    victim = lab.master_of("hv1")
    assert victim is not None
    dpids = {f"{sw.dpid:016x}" for sw in lab.switches
             if lab.masters().get(sw.name) == victim}
    others = [m for m in lab.live() if m != victim]
    mods = sum(lab.metric(m, "vfence_flow_mods_total") for m in others)
    out = tmp / f"ping-{sig}-{i}.txt"
    start_ping_stream(lab.host("web-1"), API1, out, 500)
    time.sleep(1)
    t0 = time.time()
    lab.signal_member(victim, sig)
    wait_until(lambda: dpids <= set(masters_since(lab.workdir, t0)), 20, 0.05)
    took = max(masters_since(lab.workdir, t0).get(d, float("nan")) for d in dpids) - t0
    sent, got = ping_stream_result(out, timeout=30)
    flow_mods = sum(lab.metric(m, "vfence_flow_mods_total") for m in others) - mods
    if sig == signal.SIGSTOP:
        lab.signal_member(victim, signal.SIGCONT)
    else:
        lab.start_member(victim)
    lab.wait_converged()
    wait_until(lambda: balanced(lab), 60, 0.5)
    return took * 1000, sent - got, flow_mods


def lone_restart(url: str, workdir: Path, trials: int) -> list[float]:
    """Seconds from a lone controller's SIGKILL (restarted at once) to every switch ready."""
    times = []
    with ProdLab(4, 2, PLAN, db_url=url, workdir=workdir, policy=DOC) as lab:
        for _ in range(trials):
            t0 = time.monotonic()
            lab.kill_controller(signal.SIGKILL)
            lab.start_controller()
            lab.wait_for(lambda: (lab.get("/v1/health") or {}).get("switches_ready") == 6,
                         60, "every switch ready")
            times.append(time.monotonic() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=10)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d, throwaway_postgres() as base:
        tmp = Path(d)
        with ClusterLab(3, 4, 2, PLAN, db_url=fresh_database(base), workdir=tmp / "c",
                        policy=DOC) as lab:
            wait_until(lambda: balanced(lab), 60, 0.5)
            for name, sig, n in (("SIGKILL", signal.SIGKILL, args.trials),
                                 ("SIGSTOP", signal.SIGSTOP, max(3, args.trials // 3))):
                res = [trial(lab, tmp, i, sig) for i in range(n)]
                took = [r[0] for r in res]
                rows.append((f"{name} of a master: takeover", n, pct(took, .5),
                             pct(took, .99), max(took), sum(r[1] for r in res),
                             sum(r[2] for r in res)))
        lone = [t * 1000 for t in lone_restart(f"sqlite:///{tmp}/lone.db", tmp / "lone",
                                               max(3, args.trials // 3))]
        rows.append(("baseline: lone controller restarted", len(lone), pct(lone, .5),
                     pct(lone, .99), max(lone), 0, 0))
    print(f"\n{'':40} {'n':>3} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'lost':>5} "
          f"{'flow-mods':>9}")
    for name, n, p50, p99, mx, lost, mods in rows:
        print(f"{name:40} {n:>3} {p50:>8.0f} {p99:>8.0f} {mx:>8.0f} {lost:>5} {mods:>9.0f}")
    print("goal: a new master within 1000 ms of a SIGKILL, 0 pings lost, 0 flow-mods")


if __name__ == "__main__":
    main()
