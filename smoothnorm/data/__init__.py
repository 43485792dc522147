"""Data: CIFAR-10 (reader, checksums, download), synthetic data sets, augmentation and batching.

Data knows no models: everything here returns NumPy arrays (images NCHW float32, labels int64).
"""

from ._io import ChecksumError, DownloadError, data_home
from .augment import augment_batch
from .batching import BatchSampler, iterate_minibatches
from .cifar10 import fetch_cifar10, load_cifar10
from .normalization import IMAGE_SCALES, INPUT_NORMS, InputNormalizer, normalize_inputs
from .synthetic import IMAGE_CLASSES, gaussian_regression, synthetic_images

# Data sets that `smoothnorm data fetch NAME` can download: name -> fetch function(root=None, progress=True).
FETCHERS = {"cifar10": fetch_cifar10}

__all__ = [
    "FETCHERS",
    "IMAGE_CLASSES",
    "IMAGE_SCALES",
    "INPUT_NORMS",
    "InputNormalizer",
    "BatchSampler",
    "ChecksumError",
    "DownloadError",
    "augment_batch",
    "data_home",
    "fetch_cifar10",
    "gaussian_regression",
    "iterate_minibatches",
    "load_cifar10",
    "normalize_inputs",
    "synthetic_images",
]
