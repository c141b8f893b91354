"""Lab fixtures: real Open vSwitch (userspace datapath), Mininet hosts, controller process."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import _free_port

FRAMES = Path(__file__).with_name("frames.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session", autouse=True)
def _lab_prereqs():
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (Mininet, Open vSwitch)")
    for tool in ("ovs-vsctl", "mn", "tcpdump", "ethtool", "nc"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not installed: run `make test`, which installs it")
    if subprocess.run(["ovs-vsctl", "--timeout=5", "show"], capture_output=True).returncode:
        pytest.fail("Open vSwitch is not running: run `make test`, which starts it")
    import vfence

    if os.environ.get("VFENCE_INSTALLED") and "site-packages" not in vfence.__file__:
        pytest.fail(f"make test runs the labs on the installed wheel, not {vfence.__file__}")


def ports() -> tuple[int, int]:
    return _free_port(), _free_port()


class Capture:
    """tcpdump on a Mininet host interface, read back with scapy."""

    def __init__(self, host, iface: str, path: Path) -> None:
        self.host, self.path = host, path
        self.err = path.with_suffix(".err")
        host.cmd(f"tcpdump -i {iface} -U --immediate-mode -w {path} 2>{self.err} & "
                 f"echo $! > {path}.pid")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.err.exists() and "listening" in self.err.read_text():
                return
            time.sleep(0.1)
        raise RuntimeError(f"tcpdump did not start: {self.err.read_text()}")

    def frames(self) -> list:
        """What has been captured so far (tcpdump -U writes packet by packet)."""
        from scapy.all import rdpcap
        from scapy.error import Scapy_Exception

        try:
            return list(rdpcap(str(self.path)))
        except (Scapy_Exception, EOFError, OSError):
            return []

    def wait(self, pred, timeout: float = 3.0) -> None:
        """Wait until ``pred(frames)`` holds (or the timeout: the caller asserts)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not pred(self.frames()):
            time.sleep(0.1)

    def stop(self, settle: float = 0.5) -> list:
        time.sleep(settle)
        self.host.cmd(f"kill $(cat {self.path}.pid); sleep 0.3")
        return self.frames()


def send_frames(host, iface: str, src: str, dst: str, count: int = 5, etype: int = 0x88B5) -> str:
    out = host.cmd(f"{sys.executable} {FRAMES} {iface} {src} {dst} {count} {etype}; echo rc=$?")
    assert "rc=0" in out and "Traceback" not in out, out
    return out


SOCK = Path(__file__).with_name("sock.py")
ATTACKS = Path(__file__).with_name("scapy_attacks.py")


def serve(host, proto: str, port: int, seconds: int = 600) -> None:
    host.cmd(f"{sys.executable} {SOCK} serve {proto} {port} {seconds} >/dev/null 2>&1 &")


def probe(host, targets: list[tuple[str, str, int]]) -> dict[tuple[str, str, int], bool]:
    """Connect (tcp) or send (udp) to every (proto, ip, port) in parallel from ``host``;
    True where an echo came back."""
    script = " ".join(
        f"(echo {i}=$({sys.executable} {SOCK} send {proto} {ip} {port} m{i})) &"
        for i, (proto, ip, port) in enumerate(targets))
    out = host.cmd(f"( {script} wait )")  # wait for these probes only, not the servers
    got: dict[int, bool] = {}
    for line in out.split():
        if "=" in line:
            i, _, res = line.partition("=")
            if i.isdigit():
                got[int(i)] = res == f"reply:m{i}"
    return {t: got.get(i, False) for i, t in enumerate(targets)}


def attack(host, iface: str, *args: str) -> str:
    out = host.cmd(f"{sys.executable} {ATTACKS} {iface} {' '.join(args)}; echo rc=$?")
    assert "rc=0" in out, out
    return out


def flow_packets(bridge: str, cookie: int) -> int:
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge,
                          f"cookie={cookie:#x}/-1"], capture_output=True, text=True).stdout
    return sum(int(n) for n in re.findall(r"n_packets=(\d+)", out))


def vm_id(bridges, mac: str) -> int:
    """A VM's id (its cookie's low bits), from the destination lookup that every host of
    its segment holds."""
    for br in bridges:
        for ln in flows_text(br):
            if "table=15" in ln and f"dl_dst={mac}" in ln:
                return int(ln.split("cookie=")[1].split(",")[0], 16) & 0xFFFF
    raise AssertionError(f"no flows for {mac}")


def flows_text(bridge: str) -> list[str]:
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "--no-stats", "dump-flows", bridge],
                         capture_output=True, text=True, check=True).stdout
    return sorted(ln.strip() for ln in out.splitlines() if "actions=" in ln)
