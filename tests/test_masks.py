"""The fast mask and label-map operations give what ``scipy.ndimage`` gives."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from l3node.analysis.masks import fill_holes, region_max, region_median, region_min


def _label_maps(seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        shape = (int(rng.integers(3, 50)), int(rng.integers(3, 50)))
        n = int(rng.integers(1, 10))
        labels = rng.integers(0, n + 2, shape)  # some pixels labelled n + 1: not reported
        labels[labels == 2] = 0  # region 2 empty where n >= 2
        values = {
            "float": rng.normal(size=shape),
            "int": rng.integers(-50, 50, shape),
            "bool": rng.random(shape) > 0.7,
            "row index, broadcast": np.arange(shape[0])[:, None],
        }
        yield labels, n, values


@pytest.mark.parametrize(("ours", "theirs"), [(region_max, ndi.maximum), (region_min, ndi.minimum),
                                              (region_median, ndi.median)])
def test_region_statistics_equal_scipy(ours, theirs):
    compared = 0
    for labels, n, values in _label_maps(0):
        present = np.bincount(labels.ravel(), minlength=n + 2)[1 : n + 1] > 0
        for name, image in values.items():
            expected = np.asarray(theirs(np.broadcast_to(image, labels.shape), labels, np.arange(1, n + 1)), float)
            got = ours(image, labels, n)
            assert got.shape == (n,)
            assert np.array_equal(got[present], expected[present]), name
            compared += int(present.sum())
    assert compared > 500


def test_fill_holes_equals_scipy():
    rng = np.random.default_rng(1)
    for i in range(300):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        mask = rng.random(shape) > rng.uniform(0.1, 0.9)
        if i % 2:
            mask = ndi.binary_closing(mask)
        assert np.array_equal(fill_holes(mask), ndi.binary_fill_holes(mask))
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False
    assert fill_holes(ring).sum() == 25  # the hole filled
    assert fill_holes(~ring).all()  # the ring itself is the hole of its complement


def test_fill_holes_up_to_a_size_fills_only_those():
    rng = np.random.default_rng(2)
    for _ in range(200):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        mask = rng.random(shape) > rng.uniform(0.1, 0.9)
        limit = int(rng.integers(1, 6))
        # Reference: scipy's holes (4-connected background), kept one by one when small enough.
        holes, n = ndi.label(ndi.binary_fill_holes(mask) & ~mask)
        sizes = np.bincount(holes.ravel(), minlength=n + 1)
        expected = mask | ((holes > 0) & (sizes[holes] <= limit))
        assert np.array_equal(fill_holes(mask, limit), expected)
    ring = np.ones((9, 9), bool)
    ring[2, 2] = False  # a one-pixel hole
    ring[5:7, 5:7] = False  # a four-pixel hole
    assert fill_holes(ring, 1).sum() == 81 - 4
    assert fill_holes(ring, 4).all()
