"""Convolution kernels: `conv2d` (the public forward and backward, and the choice of algorithm per layer), the
im2col algorithm (`_im2col`), Winograd F(2x2,3x3) and F(4x4,3x3) (`winograd`, `_winograd_transforms`) and the
per-thread scratch memory their temporaries come from (`_scratch`). Pure Numba: arrays in, arrays out.
"""
