"""Move a VM (a Mininet host) to another hypervisor the way a real one does.

1. the target hypervisor creates the VM's port (a new veth on the target bridge, same MAC)
   and, like libvirt, sets ``external_ids:attached-mac``/``iface-id`` on it;
2. switch-over: the VM stops on the source and resumes on the target (its address moves
   to the new interface);
3. QEMU announces the VM with 5 RARP frames (0, 50, 200, 450, 800 ms);
4. the source removes the old port.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mininet.net import Mininet

from .datacenter import VMPlan, plug_like_libvirt, switch_intf

RARP = Path(__file__).with_name("rarp.py")


@dataclass
class Migration:
    vm: str
    old_port: str
    new_port: str
    started: float
    switched: float


def migrate(net: Mininet, p: VMPlan, target: str, **kw) -> Migration:
    """Move one VM to ``target`` (a bridge name)."""
    return migrate_many(net, [(p, target)], **kw)[0]


def migrate_many(net: Mininet, moves: list[tuple[VMPlan, str]], *, libvirt_ids: bool = True,
                 announce: bool = True, precopy: float = 0.2, remove_old_after: float = 1.0,
                 old_link_down: bool = True
                 ) -> list[Migration]:
    """Move several VMs at once, phase by phase, as a cluster evacuating a host would."""
    started = time.monotonic()
    staged = []
    for p, target in moves:  # 1. ports appear on the targets, as libvirt plugs the taps
        host, sw = net.get(p.name), net.get(target)
        old_intf = host.defaultIntf()
        old_link = old_intf.link
        old_sw_intf = old_link.intf2 if old_link.intf1 is old_intf else old_link.intf1
        link = net.addLink(host, sw)
        new_intf, new_sw_intf = (link.intf1, link.intf2) if link.intf1.node is host else (
            link.intf2, link.intf1)
        new_intf.setMAC(p.mac)
        host.cmd(f"ip link set {new_intf.name} down")  # the VM is not running there yet
        sw.attach(new_sw_intf)
        if libvirt_ids:
            plug_like_libvirt(new_sw_intf, p)
        if announce:  # QEMU announces as soon as the VM resumes on the target
            host.cmd(f"{sys.executable} {RARP} {new_intf.name} {p.mac} >/dev/null 2>&1 &")
        staged.append((p, host, old_intf, old_link, old_sw_intf, new_intf, new_sw_intf))
    time.sleep(max(precopy, 1.5 if announce else 0))  # pre-copy (and the announcer loads)
    done = []
    for p, host, old_intf, _, old_sw_intf, new_intf, new_sw_intf in staged:
        # 2. switch-over: stop at the source, resume at the target
        # QEMU keeps the source tap up until its process exits (old_link_down=False): the
        # guest is gone from it but its link stays up. Here the old NIC is parked in an
        # empty bridge that stays down: carrier on, and nothing sent or received.
        down = f"ip link set {old_intf.name} down; " if old_link_down else (
            f"ip link add vf-park type bridge 2>/dev/null; "
            f"ip link set {old_intf.name} master vf-park; ")
        # addresses first: Linux drops IPv6 addresses from an interface that goes down
        # and the guest's routes through the NIC (a default route via its gateway, IPv4
        # and IPv6) go with them once the new NIC is up: the guest never notices the move
        host.cmd(f"routes=$(ip -4 route show dev {old_intf.name} | grep -v 'proto kernel'); "
                 f"routes6=$(ip -6 route show dev {old_intf.name} | grep -v 'proto kernel' "
                 f"| grep -v '^multicast' | sed 's/ expires [^ ]*//'); "
                 f"{_move_addresses(old_intf.name, new_intf.name)}; {down}"
                 f"ip link set {new_intf.name} up; "
                 f"echo \"$routes\" | while read -r r; do [ -n \"$r\" ] && "
                 f"ip route replace $r dev {new_intf.name}; done; "
                 f"echo \"$routes6\" | while read -r r; do [ -n \"$r\" ] && "
                 f"ip -6 route replace $r dev {new_intf.name}; done")
        switched = time.monotonic()  # 3. the announcer sends RARPs from the new place now
        done.append(Migration(p.name, old_sw_intf.name, new_sw_intf.name, started, switched))
    time.sleep(remove_old_after)
    for _, _, _, old_link, old_sw_intf, _, _ in staged:  # 4. the source cleans up
        old_sw_intf.node.detach(old_sw_intf)
        net.delLink(old_link)
    return done


def _move_addresses(old: str, new: str) -> str:
    """Shell: every global IPv4 and IPv6 address of ``old`` goes to ``new`` (the guest's
    configuration is the same after a migration)."""
    return (f"for a in $(ip -4 -o addr show dev {old} | awk '{{print $4}}'); do "
            f"ip addr del $a dev {old}; ip addr add $a dev {new}; done; "
            f"for a in $(ip -6 -o addr show dev {old} scope global | awk '{{print $4}}'); do "
            f"ip addr del $a dev {old}; ip addr add $a dev {new} nodad; done")


def current_port(net: Mininet, vm: str) -> str:
    return switch_intf(net, vm)
