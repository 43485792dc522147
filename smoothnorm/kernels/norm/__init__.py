"""Normalization kernels: BatchNorm (train and eval mode, its fused float64 R-pass), noisy BatchNorm, the Lp
batch norms and the per-sample norms (GroupNorm, and so LayerNorm and InstanceNorm).

The batch-statistics norms share one skeleton (`skeleton`: sums, finish, apply passes) into which each variant
plugs its statistic as jitted functions; per-channel statistics are summed over fixed channel blocks
(`channel_blocks`) whose boundaries depend on the shapes only, so the bits do not depend on the thread count.
`arguments` checks the public functions' arguments. Pure Numba: arrays in, arrays out.
"""
