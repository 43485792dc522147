"""Normalization kernels: BatchNorm (train and eval mode, its fused float64 R-pass), noisy BatchNorm, the Lp
batch norms and the per-sample norms (GroupNorm, and so LayerNorm and InstanceNorm).

Per-channel statistics are summed over fixed channel blocks (`channel_blocks`) whose boundaries depend on the
shapes only, so the bits do not depend on the thread count. Pure Numba: arrays in, arrays out.
"""
