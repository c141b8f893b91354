"""Run inside a Mininet host: QEMU's post-migration announcement, 5 RARP frames at
about 0, 50, 200, 450 and 800 ms (qemu_announce_self).

    python rarp.py IFACE MAC
"""

import sys
import time

from scapy.all import ARP, Ether, sendp

iface, mac = sys.argv[1], sys.argv[2]
frame = Ether(src=mac, dst="ff:ff:ff:ff:ff:ff", type=0x8035) / ARP(
    op=3, hwsrc=mac, hwdst=mac, psrc="0.0.0.0", pdst="0.0.0.0")
start = time.monotonic()
for at in (0.0, 0.05, 0.2, 0.45, 0.8):
    time.sleep(max(0.0, start + at - time.monotonic()))
    sendp(frame, iface=iface, verbose=False)
