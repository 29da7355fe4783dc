"""The one default of every growth option shared by the API, the grower, the tuner and the configs.

Each option is documented here once; the functions and classes that take it use these names as their
defaults instead of their own literals, so changing a default is one edit.

=================  =========  ===========================================================================
name               value      meaning
=================  =========  ===========================================================================
``EPSILON``        ``0.1``    Splitting step size: offspring weights are ``theta +- epsilon * v_min``
                              (Liu, Wu & Wang 2019, eq. 4; the loss changes by ``epsilon**2 * lambda / 2``).
                              Chosen on digits validation accuracy (``results/epsilon_sweep.txt``); the
                              official MobileNetV1 code uses 0.01.
``GROW_RATIO``     ``0.3``    Neurons split per step as a fraction of the current neurons (``m*`` of
                              Algorithm 1): ``max(1, round(GROW_RATIO * n))``, in ``(0, 1]``.
``METHOD``         ``"auto"`` How ``compute_splitting`` finds ``lambda_min``: ``"exact"`` (the ``d x d``
                              matrices), ``"fast"`` (matrix-free LOBPCG) or ``"auto"`` (exact for small
                              neurons, fast for large ones).
``THRESHOLD``      ``0.0``    Only neurons with ``lambda_min < THRESHOLD`` (``<= 0``) are split by the
                              sign-based rules; none left means a splitting-stable point.
``SELECTION``      ``"negative"``  The selection rule by name (:data:`nni_splitting.growth.selection.SELECTION_RULES`).
``FRACTION``       ``0.3``    Share of all neurons the ``"lowest_fraction"`` rule splits, whatever the sign
                              of their index (the official code's "lowest 30% every round").
``SOLVER``         ``"highs"``  Solver of the energy-aware LP (``"highs"`` or ``"greedy"``).
=================  =========  ===========================================================================
"""
from __future__ import annotations

import logging
import math

__all__ = ["EPSILON", "GROW_RATIO", "METHOD", "THRESHOLD", "SELECTION", "FRACTION", "SOLVER", "check_epsilon"]

logger = logging.getLogger(__name__)

EPSILON = 0.1
GROW_RATIO = 0.3
METHOD = "auto"
THRESHOLD = 0.0
SELECTION = "negative"
FRACTION = 0.3
SOLVER = "highs"


def check_epsilon(epsilon, what: str = "epsilon") -> float:
    """``epsilon`` (the splitting step size: offspring ``theta +- epsilon v``) as a float: a finite number >= 0.

    The one check of every entry point (surgery, signed splits, the tuner's classArgs, a lineage's own).
    """
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"{what}={epsilon!r} must be a finite number >= 0")
    return float(epsilon)
