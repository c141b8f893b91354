"""The unit tests' switch: controller/walk.py's concrete pipeline (one packet through
compiled flows, in microseconds; never instead of the lab's real Open vSwitch)."""

from vfence.controller.walk import Pipeline as Pipeline
