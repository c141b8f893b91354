from vfence.controller import topology
from vfence.controller.model import Link, PortRef

from .netfixtures import HV1, HV2, SP1, SP2, link_pair


def test_one_direction_only_is_not_a_link():
    links = {Link(PortRef(HV1, 1), PortRef(SP1, 1))}
    assert topology.graph(links).number_of_edges() == 0
    assert topology.next_hops(links, {HV1, SP1}) == {HV1: {}, SP1: {}}


def test_next_hops_on_a_loop_are_shortest_and_deterministic():
    links = (link_pair(HV1, 1, SP1, 1) | link_pair(HV1, 2, SP2, 1)
             | link_pair(HV2, 1, SP1, 2) | link_pair(HV2, 2, SP2, 2))
    hops = topology.next_hops(links, {HV1, HV2, SP1, SP2})
    assert hops[SP1] == {HV1: 1, HV2: 2, SP2: 1}
    assert hops[HV1][HV2] in (1, 2)
    assert hops == topology.next_hops(links, {HV1, HV2, SP1, SP2})
    assert topology.fabric_ports(links)[HV1] == {1, 2}
