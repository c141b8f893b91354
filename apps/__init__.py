"""Thin os-ken shell: translates OpenFlow/OVSDB events into core calls and sends what
the core returns."""
