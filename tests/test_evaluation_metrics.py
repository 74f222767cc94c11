"""Metric definitions and the empty-mask policy, against values computed by hand on tiny arrays."""
import math

import numpy as np
import pytest

from nnunet_semi.evaluation.metrics import drop_singleton_axes, image_diagonal_mm, ssl4mis_metrics, surface_metrics

SPACING = (5.0, 2.0, 1.0)  # (z, y, x) in mm, the axis order of the arrays


def voxels(shape, *points):
    mask = np.zeros(shape, dtype=bool)
    for p in points:
        mask[p] = True
    return mask


def test_surface_metrics_use_the_spacing_of_each_axis():
    # reference: one voxel; prediction: one voxel 3 steps along x (3 mm) and one 3 steps along z (15 mm).
    # pred -> ref distances {3, 15}; ref -> pred {3}.
    ref = voxels((5, 8, 8), (1, 1, 1))
    pred = voxels((5, 8, 8), (1, 1, 4), (4, 1, 1))
    m = surface_metrics(pred, ref, SPACING, nsd_tolerance_mm=3.0)
    assert m["HD95"] == pytest.approx(3 + 0.95 * 12)  # max(95th pct of {3, 15}, of {3}), linear interpolation
    assert m["ASD"] == pytest.approx((3 + 15) / 2)  # prediction -> reference
    assert m["ASSD"] == pytest.approx((3 + 15 + 3) / 3)  # all boundary voxels of both masks
    assert m["NSD"] == pytest.approx(2 / 3)  # 2 of 3 boundary voxels within 3 mm
    assert surface_metrics(pred, ref, SPACING, nsd_tolerance_mm=15.0)["NSD"] == pytest.approx(1.0)


def test_anisotropic_axis_order_matters():
    ref = voxels((5, 8, 8), (1, 1, 1))
    along_y = voxels((5, 8, 8), (1, 3, 1))
    assert surface_metrics(along_y, ref, SPACING)["HD95"] == pytest.approx(4.0)  # 2 voxels x 2 mm
    along_z = voxels((5, 8, 8), (3, 1, 1))
    assert surface_metrics(along_z, ref, SPACING)["HD95"] == pytest.approx(10.0)  # 2 voxels x 5 mm


def test_both_masks_empty_is_nan_for_every_metric():
    empty = np.zeros((5, 8, 8), dtype=bool)
    assert all(math.isnan(v) for v in surface_metrics(empty, empty, SPACING).values())


@pytest.mark.parametrize("which_empty", ["prediction", "reference"])
def test_one_empty_mask_scores_the_image_diagonal_and_nsd_zero(which_empty):
    mask, empty = voxels((5, 8, 8), (2, 2, 2)), np.zeros((5, 8, 8), dtype=bool)
    pred, ref = (empty, mask) if which_empty == "prediction" else (mask, empty)
    diagonal = math.sqrt((5 * 5.0) ** 2 + (8 * 2.0) ** 2 + (8 * 1.0) ** 2)
    assert image_diagonal_mm((5, 8, 8), SPACING) == pytest.approx(diagonal)
    assert surface_metrics(pred, ref, SPACING) == pytest.approx(
        {"HD95": diagonal, "ASD": diagonal, "ASSD": diagonal, "NSD": 0.0})


def test_singleton_axes_are_dropped_so_2d_boundaries_are_2d():
    # reference: a 3x3 square; prediction: its centre pixel. In 2D the square's boundary is its 8 border pixels:
    # pred -> ref = {1}; ref -> pred = 4 x 1 and 4 x sqrt(2).
    ref = np.zeros((1, 5, 5), dtype=bool)
    ref[0, 1:4, 1:4] = True
    pred = voxels((1, 5, 5), (0, 2, 2))
    ref2d, pred2d, spacing = drop_singleton_axes(ref, pred, (999.0, 1.0, 1.0))
    assert ref2d.shape == (5, 5) and spacing == (1.0, 1.0)
    m = surface_metrics(pred2d, ref2d, spacing)
    assert m["ASD"] == pytest.approx(1.0)
    assert m["ASSD"] == pytest.approx((1 + 4 + 4 * math.sqrt(2)) / 9)
    assert m["HD95"] == pytest.approx(math.sqrt(2))
    assert image_diagonal_mm(ref2d.shape, spacing) == pytest.approx(math.sqrt(50))


def test_ssl4mis_metrics_follow_medpy_in_voxel_units():
    # ref: two neighbouring voxels; pred: one of them and one 3 voxels further. Boundaries are all four voxels.
    ref = voxels((3, 3, 8), (1, 1, 0), (1, 1, 1))
    pred = voxels((3, 3, 8), (1, 1, 1), (1, 1, 4))
    m = ssl4mis_metrics(pred, ref)
    assert m["Dice"] == pytest.approx(0.5)
    assert m["IoU"] == pytest.approx(1 / 3)
    assert m["ASD"] == pytest.approx((0 + 3) / 2)  # prediction -> reference
    assert m["HD95"] == pytest.approx(1 + 0.85 * 2)  # 95th percentile of the pooled distances [0, 0, 1, 3]
    # MONAI's HD95 (nnunet mode) is the max of the directed percentiles instead: max(0.95 * 3, 0.95 * 1)
    assert surface_metrics(pred, ref, (1.0, 1.0, 1.0))["HD95"] == pytest.approx(2.85)


def test_ssl4mis_missing_class_scores_zero_even_when_the_reference_is_empty_too():
    empty = np.zeros((3, 3, 3), dtype=bool)
    expected = {"Dice": 0.0, "IoU": 0.0, "HD95": 0.0, "ASD": 0.0}
    assert ssl4mis_metrics(empty, voxels((3, 3, 3), (1, 1, 1))) == expected
    assert ssl4mis_metrics(empty, empty) == expected


def test_ssl4mis_prediction_without_reference_has_zero_overlap_and_undefined_distances():
    m = ssl4mis_metrics(voxels((3, 3, 3), (1, 1, 1)), np.zeros((3, 3, 3), dtype=bool))
    assert m["Dice"] == 0.0 and m["IoU"] == 0.0
    assert math.isnan(m["HD95"]) and math.isnan(m["ASD"])
