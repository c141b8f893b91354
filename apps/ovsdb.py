"""Watches Open vSwitch databases (the ``ovs`` IDL) for VM interfaces.

libvirt/OpenStack set ``external_ids:attached-mac`` and ``iface-id`` on the Interface
when they create a VM's port, so a VM is bound before it sends anything. Each change
yields a full snapshot of interfaces for the service.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable

with warnings.catch_warnings():
    # the ovs library imports eventlet when it is installed (os-ken pulls it in), which
    # warns on every start; vfence does not use eventlet
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    import ovs.db.idl
    import ovs.jsonrpc
    import ovs.poller
    import ovs.stream

from vfence.controller.hosts import FABRIC_KEY, HOST_KEY, ROLE_KEY, Bridge, HostDb, Interface

LOG = logging.getLogger("vfence.ovsdb")


def fetch_schema(remote: str, timeout: float = 5.0) -> dict:
    err, stream = ovs.stream.Stream.open_block(ovs.stream.Stream.open(remote), int(timeout * 1000))
    if err:
        raise OSError(err, f"cannot reach OVSDB at {remote}")
    rpc = ovs.jsonrpc.Connection(stream)
    try:
        err, reply = rpc.transact_block(
            ovs.jsonrpc.Message.create_request("get_schema", ["Open_vSwitch"])
        )
        if err or reply.error:
            raise OSError(err or 0, f"get_schema failed at {remote}: {reply and reply.error}")
        return reply.result
    finally:
        rpc.close()


def snapshot(idl: ovs.db.idl.Idl, remote: str, name: str | None = None) -> HostDb:
    """The host as its OVSDB describes it; ``name`` (the operator's) wins over its own."""
    host = None
    for row in idl.tables["Open_vSwitch"].rows.values():
        ext = dict(row.external_ids)
        host = ext.get(HOST_KEY) or ext.get("hostname")
    bridges, interfaces = [], []
    for br in idl.tables["Bridge"].rows.values():
        try:
            dpid = int((br.datapath_id or ["0"])[0], 16)
        except ValueError:
            continue
        ext = dict(br.external_ids)
        bridges.append(Bridge(dpid, br.name, ext.get(HOST_KEY),
                              ext.get(ROLE_KEY) == "fabric"))
        for port in br.ports:
            for iface in port.interfaces:
                ofport = (iface.ofport or [-1])[0]
                ext = dict(iface.external_ids)
                interfaces.append(Interface(dpid, ofport, iface.name, ext.get("attached-mac"),
                                            ext.get("iface-id"),
                                            ext.get(FABRIC_KEY) == "true"))
    return HostDb(remote, tuple(interfaces), tuple(bridges), host, name)


def parse_remote(spec: str) -> tuple[str | None, str]:
    """``NAME=REMOTE`` (the operator names the host) or plain ``REMOTE``."""
    name, sep, remote = spec.partition("=")
    if sep and ":" not in name:
        return name or None, remote
    return None, spec


class Monitor:
    """One thread per OVSDB remote, calling ``on_snapshot`` after each change."""

    def __init__(self, spec: str, on_snapshot: Callable[[HostDb], None]):
        self.name, self.remote = parse_remote(spec)
        self.on_snapshot = on_snapshot
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"ovsdb:{self.remote}",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._watch()
            except OSError as e:  # not up yet, or restarting: keep trying, quietly
                LOG.warning("OVSDB %s: %s; retrying", self.remote, e)
                self._stop.wait(1)
            except Exception:  # keep watching: OVSDB may restart
                LOG.exception("OVSDB monitor %s failed; retrying", self.remote)
                self._stop.wait(1)

    def _watch(self) -> None:
        helper = ovs.db.idl.SchemaHelper(schema_json=fetch_schema(self.remote))
        helper.register_columns("Open_vSwitch", ["external_ids"])
        helper.register_columns("Bridge", ["name", "datapath_id", "ports", "external_ids"])
        helper.register_columns("Port", ["name", "interfaces"])
        helper.register_columns("Interface", ["name", "ofport", "external_ids"])
        idl = ovs.db.idl.Idl(self.remote, helper)
        seen = -1
        try:
            while not self._stop.is_set():
                idl.run()
                if idl.change_seqno != seen and idl.has_ever_connected():
                    seen = idl.change_seqno
                    self.on_snapshot(snapshot(idl, self.remote, self.name))
                poller = ovs.poller.Poller()
                idl.wait(poller)
                poller.timer_wait(500)
                poller.block()
        finally:
            idl.close()
