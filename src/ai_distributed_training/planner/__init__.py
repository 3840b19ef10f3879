"""The planner: predict memory, step time and scaling for N workers without training.

``counting`` (the model on the meta device), ``profiles`` (hardware profiles: presets, files),
``timing`` (timing helpers and the compute probe), ``plan`` (the formulas and the
recommendation), ``calibration`` (measuring this machine: the one planner part that launches
processes, through :mod:`..launch`).
"""

from .calibration import calibrate, resolve_profile
from .plan import DEFAULT_NODES, Plan, choose_strategy, make_plan
from .profiles import PRESETS, THIS_MACHINE, HardwareProfile, save_profile

__all__ = [
    "DEFAULT_NODES",
    "PRESETS",
    "THIS_MACHINE",
    "HardwareProfile",
    "Plan",
    "calibrate",
    "choose_strategy",
    "make_plan",
    "resolve_profile",
    "save_profile",
]
