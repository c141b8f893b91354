"""The frame a host sends out of its uplink for a VM of a bridged segment that just
arrived there (controller/bridged.py says when): a gratuitous ARP from the VM's MAC and
address, tagged with the segment's VLAN (a RARP, as QEMU sends, when it has no IPv4
address). Physical switches learn the MAC on this uplink; physical hosts refresh their
ARP caches."""

from __future__ import annotations

import ipaddress

from os_ken.lib.packet import arp, ethernet, packet, vlan

from vfence.controller.model import VM

BROADCAST = "ff:ff:ff:ff:ff:ff"
ETH_TYPE_RARP = 0x8035


def announcement(vm: VM, vid: int) -> bytes:
    ip = next((a for a in vm.ips if ipaddress.ip_address(a).version == 4), None)
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(BROADCAST, vm.mac, 0x8100))
    if ip is not None:  # RFC 5227's announcement: a request for its own address
        pkt.add_protocol(vlan.vlan(vid=vid, ethertype=0x0806))
        pkt.add_protocol(arp.arp(opcode=arp.ARP_REQUEST, src_mac=vm.mac, src_ip=ip,
                                 dst_mac="00:00:00:00:00:00", dst_ip=ip))
    else:  # RFC 903 "request reverse", as QEMU announces a migrated guest
        pkt.add_protocol(vlan.vlan(vid=vid, ethertype=ETH_TYPE_RARP))
        pkt.add_protocol(arp.arp(opcode=3, src_mac=vm.mac, src_ip="0.0.0.0",
                                 dst_mac=vm.mac, dst_ip="0.0.0.0"))
    pkt.serialize()
    return bytes(pkt.data)
