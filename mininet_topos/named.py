"""A real authoritative DNS server for the tests: BIND 9 (Debian ``bind9``), started as
DESIGN.md says (``named -4 -n 1 -f -c DIR/named.conf``; directory, pid file and session
key in DIR; no control channel), with zones that accept updates signed by one TSIG key.

Optionally inside a network namespace (the lab's uplink network). Killing it with
SIGKILL and starting it again keeps what it took: dynamic zones journal to DIR.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode

NAMED = "/usr/sbin/named"
KEY_NAME = "vfence-key"


class Named:
    def __init__(self, directory: Path, address: str, port: int, zones: list[str],
                 netns: str | None = None) -> None:
        self.dir, self.address, self.port, self.netns = directory, address, port, netns
        self.zones = [z.rstrip(".") for z in zones]
        self.secret = base64.b64encode(os.urandom(32)).decode()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def key_file(self) -> Path:
        """The key as ``tsig-keygen`` writes it (what vfence's ``secret_file`` reads)."""
        return self.dir / "vfence.key"

    def write(self) -> None:
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        key = f'key "{KEY_NAME}" {{\n\talgorithm hmac-sha256;\n\tsecret "{self.secret}";\n}};\n'
        self.key_file.write_text(key)
        zones = "".join(
            f'zone "{z}" {{ type primary; file "{d}/{z}.zone"; '
            f'allow-update {{ key "{KEY_NAME}"; }}; }};\n' for z in self.zones)
        (d / "named.conf").write_text(
            f'options {{ directory "{d}"; pid-file "{d}/named.pid"; '
            f'session-keyfile "{d}/session.key"; listen-on port {self.port} '
            f'{{ {self.address}; }}; listen-on-v6 {{ none; }}; recursion no; '
            f'notify no; dnssec-validation no; }};\n'
            f'controls {{ }};\n{key}{zones}')
        for z in self.zones:
            (d / f"{z}.zone").write_text(
                "$TTL 60\n@ IN SOA ns.invalid. hostmaster.invalid. 1 60 60 600 30\n"
                "@ IN NS ns.invalid.\n")
            (d / f"{z}.zone.jnl").unlink(missing_ok=True)

    def start(self, timeout: float = 10.0) -> Named:
        """Start ``named`` (the zone files written on first start) and wait until it
        answers for its first zone."""
        if not (self.dir / "named.conf").exists():
            self.write()
        cmd = [NAMED, "-4", "-n", "1", "-f", "-c", str(self.dir / "named.conf")]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        log = (self.dir / "named.log").open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"named exited: {(self.dir / 'named.log').read_text()}")
            try:
                if self.query(self.zones[0], "SOA"):
                    return self
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("named did not answer in time")

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed but the journal it already wrote."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def query(self, name: str, rtype: str) -> list[str]:
        """The server's answer for ``name``/``rtype`` (empty: no such record), over UDP
        from wherever the caller is (the root namespace reaches it)."""
        answer = dns.query.udp(dns.message.make_query(name, rtype), self.address,
                               timeout=1.0, port=self.port)
        if answer.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise RuntimeError(f"{name} {rtype}: {dns.rcode.to_text(answer.rcode())}")
        return sorted(rd.to_text() for rrset in answer.answer for rd in rrset)
