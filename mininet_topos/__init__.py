"""Lab topologies and the lab demo (Mininet + Open vSwitch)."""
