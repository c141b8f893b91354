"""JSON Schemas vfence reads at run time (package data: they ship in the wheel)."""
