"""Switch graph and next hops, computed with networkx.

Only links seen in both directions are used, so a half-discovered link never
black-holes traffic. For every destination switch the next hops form one BFS tree,
so forwarding on host labels is loop-free even when the fabric has cycles.
"""

from __future__ import annotations

import networkx as nx

from .model import Link


def graph(links: set[Link]) -> nx.Graph:
    """Undirected switch graph; edge attribute ``ports`` maps dpid -> local port (lowest)."""
    seen = {(lk.src.dpid, lk.src.port_no, lk.dst.dpid, lk.dst.port_no) for lk in links}
    g: nx.Graph = nx.Graph()
    for a, pa, b, pb in sorted(seen):
        if (b, pb, a, pa) not in seen or a == b:
            continue
        if g.has_edge(a, b):
            ports = g.edges[a, b]["ports"]
            if (pa, pb) >= (ports[a], ports[b]):
                continue
        g.add_edge(a, b, ports={a: pa, b: pb})
    return g


def next_hops(links: set[Link], dpids: set[int]) -> dict[int, dict[int, int]]:
    """``{switch: {destination switch: output port}}`` for every reachable pair."""
    g = graph(links)
    hops: dict[int, dict[int, int]] = {d: {} for d in dpids}
    for dest in sorted(dpids):
        if dest not in g:
            continue
        paths = nx.single_source_shortest_path(g, dest)
        for node, path in paths.items():
            if node == dest or node not in hops:
                continue
            neighbour = path[-2]
            hops[node][dest] = g.edges[node, neighbour]["ports"][node]
    return hops


def fabric_ports(links: set[Link]) -> dict[int, set[int]]:
    """Ports that face another switch (either direction seen), per switch."""
    out: dict[int, set[int]] = {}
    for lk in links:
        out.setdefault(lk.src.dpid, set()).add(lk.src.port_no)
        out.setdefault(lk.dst.dpid, set()).add(lk.dst.port_no)
    return out
