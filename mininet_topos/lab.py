"""A running lab: the controller as a real process, a Mininet datacenter, registered VMs.

Used by the demo and the Mininet tests. Everything is real: Open vSwitch bridges in the
userspace datapath, Mininet hosts, the controller process speaking OpenFlow and REST.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import httpx
from mininet.net import Mininet

from . import datacenter
from .datacenter import VMPlan

OVSDB = "unix:/var/run/openvswitch/db.sock"
PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


def start_ping_stream(host, ip: str, out: Path, count: int, interval: float = 0.01) -> None:
    """``count`` pings every ``interval`` seconds from a Mininet host, in the background."""
    host.cmd(f"ping -i {interval} -W 1 -c {count} {ip} > {out} 2>&1 &")


def ping_stream_result(out: Path, timeout: float = 20) -> tuple[int, int]:
    """(sent, received) of a ping stream, once it has finished."""
    Lab.wait_for(lambda: PING_SUMMARY.search(out.read_text()) is not None, timeout,
                 f"ping summary in {out}")
    m = PING_SUMMARY.search(out.read_text())
    assert m is not None
    return int(m.group(1)), int(m.group(2))


class LabBase:
    """What every lab shares: the controller as a real process (``serve`` with one
    ``--ovsdb`` per OVSDB the lab runs), REST, registration, convergence and traffic.
    A lab says which OVSDBs it has and how its network starts and stops."""

    def __init__(self, hosts: int, spines: int, plan: list[VMPlan], *, db_url: str,
                 workdir: Path, of_port: int = 6653, api_port: int = 8080,
                 extra_args: tuple[str, ...] = (), policy: dict | None = None,
                 register_timeout: float = 60) -> None:
        self.hosts, self.spines, self.plan = hosts, spines, plan
        self.register_timeout = register_timeout
        self.db_url, self.workdir = db_url, workdir
        self.of_port, self.api_port = of_port, api_port
        self.extra_args = extra_args
        self.policy = policy
        self.api = f"http://127.0.0.1:{api_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.net: Mininet | None = None
        self.restarts = 0

    # --- controller process -------------------------------------------------------------

    def start_controller(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"controller-{self.restarts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vfence", "serve", "--db", self.db_url,
             "--ofp-port", str(self.of_port), "--api-port", str(self.api_port),
             *(a for remote in self.ovsdb_remotes() for a in ("--ovsdb", remote)),
             *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.restarts += 1
        self.wait_for(lambda: self.get("/v1/health") is not None, 30, "controller API")

    def kill_controller(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(20)
        self.proc = None

    def get(self, path: str):
        try:
            r = httpx.get(self.api + path, timeout=5)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    # --- network (each lab its own) ------------------------------------------------------

    def ovsdb_remotes(self) -> list[str]:
        raise NotImplementedError

    def start_network(self) -> Mininet:
        raise NotImplementedError

    def stop_network(self) -> None:
        raise NotImplementedError

    def register(self) -> None:
        """VMs come from the policy document if the lab has one, else one POST each."""
        if self.policy is not None:
            r = httpx.put(self.api + "/v1/policy", json=self.policy,
                          timeout=self.register_timeout)
            if r.status_code != 200:
                raise RuntimeError(f"applying the policy: {r.status_code} {r.text}")
            return
        for p in self.plan:
            if p.register:
                r = httpx.post(self.api + "/v1/vms", json=p.rest_body(), timeout=30)
                if r.status_code not in (201, 409):
                    raise RuntimeError(f"registering {p.name}: {r.status_code} {r.text}")

    def wait_converged(self, timeout: float = 60) -> None:
        """All switches ready, the fabric fully discovered, every expected VM bound."""
        switches = self.hosts + self.spines
        links = self.hosts * self.spines
        expected = self.expected_bound()

        def done() -> bool:
            h = self.get("/v1/health")
            if not h or h.get("vms_bound", 0) < len(expected):
                return False  # (listing thousands of VMs five times a second is a load)
            vms = self.get("/v1/vms") or []
            bound = {v["name"] for v in vms if v["location"]}
            return bool(h) and h["switches_ready"] == switches and h["links"] == links \
                and expected <= bound

        self.wait_for(done, timeout, "convergence")

    def expected_bound(self) -> set[str]:
        """The VMs that convergence waits to see bound."""
        return {p.name for p in self.plan if p.register}

    def up(self) -> Self:
        self.start_controller()
        self.start_network()
        self.register()
        self.wait_converged()
        return self

    def __enter__(self) -> Self:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc: object) -> None:
        self.down()

    def down(self) -> None:
        self.kill_controller(signal.SIGTERM)
        self.stop_network()

    # --- traffic -------------------------------------------------------------------------

    def host(self, name: str):
        assert self.net is not None
        return self.net.get(name)

    def ping(self, src: str, dst: str, tries: int = 3) -> bool:
        """True as soon as one echo comes back (first packets may wait on convergence)."""
        ip = next(p.ip for p in self.plan if p.name == dst)
        for _ in range(tries):
            out = self.host(src).cmd(f"ping -c 1 -W 1 {ip}")
            if " 0% packet loss" in out:
                return True
        return False

    @staticmethod
    def wait_for(cond, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class Lab(LabBase):
    """Every bridge (hv1, hv2, sp1...) in the one system Open vSwitch, under its own name."""

    def ovsdb_remotes(self) -> list[str]:
        return [OVSDB]

    def start_network(self) -> Mininet:
        datacenter.cleanup()
        self.net = datacenter.build_net(self.hosts, self.spines, self.plan)
        datacenter.start(self.net, self.of_port)
        for p in self.plan:
            datacenter.announce_like_libvirt(self.net, p)
        return self.net

    def stop_network(self) -> None:
        if self.net is not None:
            self.net.stop()
            self.net = None
        datacenter.cleanup()
