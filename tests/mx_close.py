"""np.testing.assert_allclose for MLX arrays, decided in MLX: whole-vocabulary logits (200-300 positions x
201,088) copied to NumPy and compared there took most of a test's time; NumPy is asked only on a mismatch,
so the verdict and the failure message are NumPy's."""

from __future__ import annotations

import mlx.core as mx
import numpy as np


def assert_close(actual: mx.array, desired: mx.array, rtol: float, atol: float) -> None:
    """|actual - desired| <= atol + rtol * |desired| everywhere (NaN where both are NaN), shapes equal."""
    if actual.shape == desired.shape and mx.allclose(actual, desired, rtol=rtol, atol=atol, equal_nan=True).item():
        return
    np.testing.assert_allclose(np.array(actual), np.array(desired), rtol=rtol, atol=atol)
