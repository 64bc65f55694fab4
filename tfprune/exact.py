"""Float32 arithmetic that gives the same bits everywhere.

The functions take `xp`, the `keras.ops` module for tensors or NumPy on the
host, and use only correctly rounded float32 operations (`+ - *`,
comparisons, `floor_divide`, `min`, `max`, `where`) in a fixed order, so a
result is bit-identical on the host and on every backend and CPU, eagerly or
under `tf.function`, XLA and `jax.jit`. What compilers would rewrite is written
out so that they have nothing to rewrite: a division by a constant is a
multiplication by its float32 reciprocal (`fraction`), and
`stop + (start - stop) * weight` is clipped at each step to the range it lies
in anyway (`interpolate`), so that neither TensorFlow's grappler (which
reassociates constants) nor XLA (which fuses a multiply and an add into one
FMA) changes its rounding. Powers are square-and-multiply.

Example (0.8 * (1 - (1 - 1/2) ** 3)):
>>> from keras import ops
>>> float(interpolate(ops, 0.0, 0.8, static_power(ops, fraction(ops, 1, 2), 3)))
0.699999988079071
"""

import numpy as np


def fraction(xp, count, total):
    """`count / total` in float32, for an integer tensor `0 <= count <= total`.

    A multiplication by the float32 reciprocal of the static int `total`, rounded
    up so that `total * reciprocal >= 1`: then `min(count * reciprocal, 1)` is
    exactly 0 and 1 at the ends and within 2 ulps of the quotient between them.
    (XLA rewrites `x / constant` into `x * (1 / constant)`, so a division would
    not give the host's bits under `jit`.)
    """
    reciprocal = np.float32(1 / total)
    while np.float32(total) * reciprocal < 1:
        reciprocal = np.nextafter(reciprocal, np.float32(2))
    return xp.minimum(xp.multiply(xp.cast(count, "float32"), reciprocal), np.float32(1))


def interpolate(xp, start, stop, weight):
    """`stop + (start - stop) * weight` in float32: static ends, `0 <= weight <= 1`.

    The weight, the product and the sum are clipped to the ranges they lie in
    anyway (rounding is monotonic), so no value changes. The clips keep graph
    rewriters from changing the rounding: TensorFlow's grappler moves constants
    through products and sums (`c * (a * b)` -> `a * (c * b)`, and in the
    `keep_count`'s `1 - sparsity`, `1 - (stop + x)` -> `(1 - stop) - x`), and XLA
    fuses a multiply and the add after it into one FMA, which rounds once
    instead of twice (and so differs between CPUs with and without FMA).
    """
    stop, c = np.float32(stop), np.float32(start - stop)
    zero, ends = np.float32(0), (stop, stop + c)
    term = xp.multiply(c, xp.clip(weight, zero, np.float32(1)))
    total = xp.add(stop, xp.clip(term, min(c, zero), max(c, zero)))
    return xp.clip(total, min(ends), max(ends))


def static_power(xp, x, power):
    """`x ** power` for a static Python number `power > 0`.

    `x ** floor(power)` by square-and-multiply over the bits of the integer, a
    fixed sequence of float32 multiplies; times `pow(x, frac(power))` only when
    `power` is not an integer.
    """
    whole = int(power)
    result = None if power == whole else xp.power(x, np.float32(power - whole))
    while whole:
        if whole & 1:
            result = x if result is None else xp.multiply(result, x)
        whole >>= 1
        if whole:
            x = xp.multiply(x, x)
    return result


def multiply_by_integer_power(xp, value, base, exponent):
    """`value * base ** exponent` for a static float `0 < base < 1`, integer tensor `exponent >= 0`.

    Square-and-multiply over the bits of `exponent`, a fixed number of steps
    (until the square underflows in float32), with `where` selecting, so it
    traces under `jit`. The squares `base ** 2 ** i` are computed on the host
    in float64 and rounded to float32 once, so the error is a few ulps for any
    exponent.
    """
    square = float(base)
    while 0 < np.float32(square) < 1:
        odd = xp.equal(xp.mod(exponent, 2), 1)
        value = xp.where(odd, xp.multiply(value, np.float32(square)), value)
        exponent = xp.floor_divide(exponent, 2)
        square *= square
    if np.float32(square) == 0:  # the squares of the bits left are 0 in float32
        value = xp.where(xp.greater(exponent, 0), np.float32(0), value)
    return value
