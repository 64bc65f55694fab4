"""Type checks shared by argument validation: NumPy scalars count as numbers
(`np.float32(0.5)`, `np.int64(8)`), bools do not.

>>> import numpy as np
>>> is_number(np.float32(0.5)), is_number(True), is_integer(np.int64(8)), is_integer(8.0)
(True, False, True, False)
"""

import math
import numbers
import os
import sys
import warnings


def is_integer(value):
    """An int or NumPy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value):
    """A real number (NumPy scalars included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_finite_number(value):
    """A real number that is neither infinite nor NaN."""
    return is_number(value) and math.isfinite(value)


def warn_user(message):
    """`warnings.warn(message)` attributed to the first caller outside tfprune
    (its file and line), however deep in the library the warning is raised."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level + 1)
