"""verify's witness (a list of lines) as steps the console draws as a path."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..flows import cookie_owner
from . import ofctl

_LINK = re.compile(r"^(\S+) port (\d+) -> (\S+) port (\d+)$")
_FLOW = re.compile(r"^(\S+) (table \d+(?: \([^)]*\))?) prio (\d+)(.*?) cookie (0x[0-9a-f]+) (.*)$")


@dataclass(frozen=True)
class Step:
    kind: str  # start | flow | link | jump | end
    switch: str  # where it happens ("" for a jump)
    title: str  # the short line drawn in the box
    detail: str = ""  # the match, for a flow
    foreign: bool = False  # a flow vfence did not install (no cookie of ours)


def steps(lines: list[str]) -> list[Step]:
    out = []
    for i, line in enumerate(lines):
        if i == 0 and " sends on " in line:
            vm, _, where = line.partition(" sends on ")
            out.append(Step("start", where.split(" port ")[0], f"{vm} sends on {where}"))
        elif line.startswith("delivered to "):
            out.append(Step("end", line.split(" on ")[-1].split(" port ")[0], line))
        elif m := _LINK.match(line):
            out.append(Step("link", m[1], f"{m[1]} port {m[2]} → {m[3]} port {m[4]}"))
        elif m := _FLOW.match(line):
            out.append(Step("flow", m[1], f"{m[2]}, priority {m[3]}{m[4]}, cookie {m[5]}",
                            ofctl.match_repr(m[6]), foreign=cookie_owner(int(m[5], 16)) is None))
        else:
            out.append(Step("jump", "", line))
    return out
