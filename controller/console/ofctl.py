"""Flows as an operator reads them in ``ovs-ofctl dump-flows``: the console's text."""

from __future__ import annotations

import ast
from typing import Any

from ..flows import OFPP_CONTROLLER, OFPP_IN_PORT

PORTS = {OFPP_CONTROLLER: "CONTROLLER", OFPP_IN_PORT: "IN_PORT"}


def _value(v: Any) -> str:
    return f"{v[0]}/{v[1]}" if isinstance(v, list | tuple) and len(v) == 2 else str(v)


def match(m: dict[str, Any]) -> str:
    """``in_port=3,eth_dst=01:80:c2:00:00:00/ff:ff:ff:ff:ff:f0``; nothing is ``any``."""
    return ",".join(f"{k}={_value(v)}" for k, v in m.items()) or "any"


def match_repr(text: str) -> str:
    """verify's witness writes a match as a Python dict: the same, as :func:`match`."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return match(value) if isinstance(value, dict) else text


def _action(a: list[Any]) -> str:
    name, *args = a
    if name == "set":
        return f"set_field:{_value(args[1])}->{args[0]}"
    if name == "output":
        return f"output:{PORTS.get(args[0], args[0])}"
    if name in ("resubmit", "push_vlan"):
        return f"{name}:{args[0]}"
    return f"{name}({','.join(_value(x) for x in args)})" if args else name


def instructions(ins: list[list[Any]]) -> str:
    """``meter:1 actions=output:CONTROLLER goto_table:40``; none is ``drop``."""
    out = []
    for kind, *args in ins:
        if kind == "apply":
            out.append("actions=" + ",".join(_action(a) for a in args[0]))
        elif kind == "meta":
            out.append(f"write_metadata:{args[0]:#x}/{args[1]:#x}")
        elif kind == "goto":
            out.append(f"goto_table:{args[0]}")
        else:
            out.append(f"{kind}:{','.join(map(str, args))}")
    return " ".join(out) or "drop"
