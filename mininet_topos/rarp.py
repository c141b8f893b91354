"""Run inside a Mininet host: QEMU's post-migration announcement, 5 RARP frames at
about 0, 50, 200, 450 and 800 ms after the VM resumes (qemu_announce_self).

    python rarp.py IFACE MAC

Started before the switch-over, it waits for IFACE to come up (the VM resuming) so the
first frame leaves at once, as QEMU's does, and not a scapy import later.
"""

import fcntl
import socket
import struct
import sys
import time

from scapy.all import ARP, Ether

SIOCGIFFLAGS, IFF_UP = 0x8913, 0x1


def is_up(iface: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS,
                                                  struct.pack("256s", iface.encode()))[:18])[1]
    return bool(flags & IFF_UP)


iface, mac = sys.argv[1], sys.argv[2]
frame = bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff", type=0x8035) / ARP(
    op=3, hwsrc=mac, hwdst=mac, psrc="0.0.0.0", pdst="0.0.0.0"))
# a plain packet socket, bound while the link is still down (scapy's L2socket reads the
# socket empty when it opens, which fails with ENETDOWN on a link that is down: every
# announcement was lost that way)
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((iface, 0))
deadline = time.monotonic() + 30
while not is_up(iface) and time.monotonic() < deadline:
    time.sleep(0.001)
start = time.monotonic()
for at in (0.0, 0.05, 0.2, 0.45, 0.8):
    time.sleep(max(0.0, start + at - time.monotonic()))
    sock.send(frame)
