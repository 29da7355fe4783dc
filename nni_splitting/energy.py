"""Energy-aware selection (the LP of Wang, Liu, Wu et al. 2019): kept as an import path only.

The implementation lives in :mod:`nni_splitting.selection` with every other selection rule
(``select(splits, "energy", costs=..., budget=...)``); this module re-exports its public names so
``from nni_splitting.energy import select_energy_aware`` keeps working.
"""
from __future__ import annotations

import logging

from .selection import SOLVERS, InfeasibleBudgetError, energy_aware_plan, select_energy_aware

__all__ = ["select_energy_aware", "energy_aware_plan", "InfeasibleBudgetError", "SOLVERS"]

logger = logging.getLogger(__name__)
