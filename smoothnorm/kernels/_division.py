"""Division by a constant without a divide instruction, correctly rounded: the same bits as `x / d`.

    q = RN(x * y)            y = RN(1 / d), a constant
    r = x - q d              exact: one fused multiply-add
    RN(q + r y)              one more

is the correctly rounded quotient x / d in binary floating point (Markstein's theorem: y within half an ulp of
1 / d and q within one ulp of x / d make the corrected quotient the rounded one), apart from the cases the select
below hands back to q itself: x = +-0 (the corrected quotient would lose the zero's sign), +-inf and NaN (x - q d
is NaN there; q is already x / d). Subnormal quotients are outside the theorem; float64 arithmetic on float32 data
never makes one. A vector divide costs several times a multiply-add, and the loops here divide every element: the
weight transforms of Winograd convolution spent 35-45% of their time dividing by 6, 12 and 24.

`_fma` is LLVM's fused multiply-add, which the loop vectoriser keeps in vector registers; Numba has no math.fma.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c with one rounding (float64)."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        double = ir.DoubleType()
        fn = builder.module.declare_intrinsic("llvm.fma", [double], ir.FunctionType(double, [double] * 3))
        return builder.call(fn, args)

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def divide(x, d, y):
    """x / d correctly rounded (float64), for y = 1.0 / d computed once (module doc)."""
    q = x * y
    r = _fma(-q, d, x)
    corrected = _fma(r, y, q)
    return corrected if (r == r and corrected != 0.0) else q
