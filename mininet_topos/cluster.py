"""The production-shaped lab with a cluster of controllers (issue 13).

The same hypervisors and fabric switches as :class:`.prodlab.ProdLab`, and ``members``
controller processes (``vfence serve --cluster --member cN``) sharing one PostgreSQL
database; every switch lists every member (``tcp:<root side>:<port of cN>``), including
members not started yet, as an operator lists the cluster's addresses. Members are real
processes: :meth:`ClusterLab.kill_member` sends them SIGKILL, SIGSTOP or SIGCONT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from .pgserver import free_port
from .prodlab import ProdLab


class ClusterLab(ProdLab):
    """``ClusterLab(3, 4, 2, plan, db_url=postgresql://..., workdir=...)``: members c1..c3
    started, ``spare`` more (c4...) listed in the switches and started by the test."""

    def __init__(self, members: int, hosts: int, spines: int, plan: list, *, spare: int = 0,
                 member_args: Any = lambda name: (), **kw: Any) -> None:
        """``member_args(name)``: that member's own extra ``serve`` arguments."""
        super().__init__(hosts, spines, plan, **kw)
        self.member_args = member_args
        self.ports = {f"c{i}": (free_port(), free_port())
                      for i in range(1, members + spare + 1)}
        self.first = [f"c{i}" for i in range(1, members + 1)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.api = self.url("c1")

    def url(self, member: str) -> str:
        return f"http://127.0.0.1:{self.ports[member][1]}"

    def of_ports(self) -> list[int]:
        return [of for of, _ in self.ports.values()]

    def controller_pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.poll() is None]

    # --- members --------------------------------------------------------------------------

    def start_controller(self) -> None:
        for name in self.first:
            self.start_member(name, wait=False)
        for name in self.first:
            self.wait_for(lambda n=name: self.member_get(n, "/v1/health") is not None, 60,
                          f"member {name}'s API")

    def start_member(self, name: str, wait: bool = True) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        of, api = self.ports[name]
        n = sum(1 for p in self.workdir.glob(f"{name}-*.log"))
        log = open(self.workdir / f"{name}-{n}.log", "wb")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "vfence", "serve", "--db", self.db_url, "--cluster",
             "--member", name, "--ofp-port", str(of), "--api-port", str(api),
             *(a for remote in self.ovsdb_remotes() for a in ("--ovsdb", remote)),
             *self.extra_args, *self.member_args(name)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_for(lambda: self.member_get(name, "/v1/health") is not None, 60,
                          f"member {name}'s API")

    def signal_member(self, name: str, sig: int) -> None:
        os.killpg(self.procs[name].pid, sig)
        if sig == signal.SIGKILL:
            self.procs.pop(name).wait(20)

    def kill_controller(self, sig: int = signal.SIGKILL) -> None:
        for proc in list(self.procs.values()):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)  # a stopped one cannot handle SIGTERM
                os.killpg(proc.pid, sig)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        self.procs.clear()

    def live(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    def member_get(self, name: str, path: str, timeout: float = 5) -> Any:
        try:
            r = httpx.get(self.url(name) + path, timeout=timeout)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def get(self, path: str) -> Any:
        """From the first member that answers."""
        for name in self.live():
            out = self.member_get(name, path, timeout=2)
            if out is not None:
                return out
        return None

    def cluster(self, via: str | None = None) -> dict[str, Any] | None:
        return self.member_get(via, "/v1/cluster") if via else self.get("/v1/cluster")

    def masters(self, via: str | None = None) -> dict[str, str]:
        """Switch name -> its member, for every switch with a valid lease."""
        c = self.cluster(via) or {"switches": []}
        names = {f"{sw.dpid:016x}": sw.name for sw in self.switches}
        return {names.get(s["dpid"], s["dpid"]): s["master"] for s in c["switches"]
                if s["valid"]}

    def master_of(self, switch: str) -> str | None:
        return self.masters().get(switch)

    def register(self) -> None:
        """Once every switch has a master (a write that reaches a switch without one is
        answered 503), as an orchestrator would: retried after Retry-After."""
        self.wait_for(lambda: set(self.masters()) == set(self.switch_names), 60,
                      "a master for every switch")
        for _ in range(20):
            try:
                super().register()
                return
            except RuntimeError as e:
                if " 503 " not in str(e):
                    raise
                time.sleep(1)
        raise TimeoutError("the policy was refused (503) 20 times")

    def metric(self, member: str, name: str, **labels: str) -> float:
        """The sum of a metric's samples (with these labels) at a member's /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.url(member) + "/metrics", timeout=10).text
        return sum(s.value for fam in text_string_to_metric_families(text)
                   for s in fam.samples if s.name == name
                   and all(s.labels.get(k) == v for k, v in labels.items()))

    def slave_refusals(self) -> dict[str, int]:
        """Writes each switch refused because the writer is a slave there (OVS logs
        every error reply it sends: ``OFPBRC_IS_SLAVE``)."""
        out = {}
        for name in self.switch_names:
            log = self.state_root / name / "ovs-vswitchd.log"
            out[name] = log.read_text().count("IS_SLAVE") if log.exists() else 0
        return out

    # --- convergence ----------------------------------------------------------------------

    def wait_converged(self, timeout: float = 90) -> None:
        """Every member joined, every switch mastered by a live member (evenly) and ready
        there; every member with the whole fabric and every expected VM bound."""
        expected = self.expected_bound()
        links = self.hosts * self.spines

        def done() -> bool:
            c = self.cluster() or {"members": []}
            if {m["name"] for m in c["members"] if m["live"]} != set(self.live()):
                return False  # (a member joins once its view is complete)
            masters = self.masters()
            if set(masters) != set(self.switch_names) or not set(masters.values()) <= set(
                    self.live()):
                return False
            share = [list(masters.values()).count(m) for m in self.live()]
            if max(share) - min(share) > 1:
                return False  # (hand-overs still going on)
            ready = 0
            for name in self.live():
                h = self.member_get(name, "/v1/health")
                if not h or h["links"] != links or h["vms_bound"] < len(expected):
                    return False
                ready += h["switches_ready"]
            return ready == len(self.switch_names)

        self.wait_for(done, timeout, "cluster convergence")

    def flows_of(self, switch: str) -> dict[tuple[str, str, str], tuple[str, float]]:
        """(table, cookie, priority and match) -> (actions, seconds installed) of every
        flow on the switch, as ``ovs-ofctl dump-flows`` lists them."""
        out = {}
        for line in self.switch(switch).ofctl("dump-flows").splitlines():
            head, sep, actions = line.strip().partition(" actions=")
            if not sep:
                continue
            parts = head.split(", ")
            stats = dict(p.split("=", 1) for p in parts[:-1] if "=" in p)
            out[(stats.get("table", "0"), stats.get("cookie", ""), parts[-1])] = (
                actions, float(stats.get("duration", "0s").rstrip("s")))
        return out


def wait_until(cond: Any, timeout: float, step: float = 0.01) -> float | None:
    """Seconds until ``cond()`` held, or None if it did not within ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    return None


__all__ = ["ClusterLab", "Path", "free_port", "wait_until"]
