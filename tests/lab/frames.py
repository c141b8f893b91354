"""Run inside a Mininet host: send raw Ethernet frames with scapy.

    python frames.py IFACE SRC_MAC DST_MAC COUNT [ETHERTYPE]
"""

import sys

from scapy.all import Ether, Raw, sendp

iface, src, dst, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
etype = int(sys.argv[5], 0) if len(sys.argv) > 5 else 0x88B5
sendp(Ether(src=src, dst=dst, type=etype) / Raw(b"vfence-probe" * 4), iface=iface, count=count,
      inter=0.01, verbose=False)
