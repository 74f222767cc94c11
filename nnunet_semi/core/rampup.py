"""Weight schedules for unsupervised loss terms, as functions of the optimiser step."""
from __future__ import annotations

import math


def _progress(step: int, length: int) -> float:
    return 1.0 if length <= 0 else min(max(step / length, 0.0), 1.0)


def sigmoid_rampup(step: int, length: int) -> float:
    """exp(-5 (1 - t)^2), t = step / length clipped to [0, 1].

    The ramp-up of Laine & Aila (2017) and Tarvainen & Valpola (2017); the former call it a "Gaussian ramp-up
    curve", the Mean Teacher code and SSL4MIS call it ``sigmoid_rampup``. Both names select it in ``RAMPUPS``.
    """
    t = _progress(step, length)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def linear_rampup(step: int, length: int) -> float:
    """t = step / length clipped to [0, 1]."""
    return _progress(step, length)


RAMPUPS = {"sigmoid": sigmoid_rampup, "gaussian": sigmoid_rampup, "linear": linear_rampup}
