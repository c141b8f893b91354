"""vfence: an OpenFlow 1.3 controller that secures the Open vSwitch bridge on every hypervisor.

The repository keeps its folders at the top (``controller/``, ``apps/``, ``migrations/``,
``mininet_topos/``, ``schemas/``); this package links them under one namespace, so the wheel
installs ``vfence.controller`` and friends and nothing at the top level of site-packages.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vfence")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
