"""The controller: the one place that sequences policy, granularities and hooks for a run.

:class:`~mixcache.controller.core.Controller` (``core.py``) takes each step's decision and sets
each forward's plan; ``steps.py`` places forwards in the run, ``probe.py`` measures the step
change, ``plan.py`` holds one forward's plan.
"""

from __future__ import annotations

from .core import Controller, ForwardPlan, Perturbation, StepTracker, _add_residual, _sample_of

__all__ = [
    "Controller",
    "ForwardPlan",
    "Perturbation",
    "StepTracker",
    "_add_residual",
    "_sample_of",
]
