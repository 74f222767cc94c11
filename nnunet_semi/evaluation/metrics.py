"""Per-class metrics on binary masks, under two sets of definitions, each with an explicit empty-mask policy.

``nnunet`` mode (the default; physical units)
    Dice and IoU come from nnU-Net's own evaluator (:func:`nnunetv2.evaluation.evaluate_predictions.compute_metrics`,
    called in :mod:`nnunet_semi.evaluation.folders`), so they are the numbers nnU-Net prints. The surface metrics
    come from MONAI, in millimetres, with the voxel spacing in the array's axis order:

    * ``HD95``: MONAI's 95th-percentile symmetric Hausdorff distance, i.e. the larger of the two directed 95th
      percentiles (prediction -> reference, reference -> prediction);
    * ``ASD``: average surface distance from the prediction's boundary to the reference's (directed, as medpy's
      ``asd`` and the BCP / SSL4MIS tables);
    * ``ASSD``: average symmetric surface distance, the mean over the boundary voxels of both masks of the distance
      to the other mask's boundary;
    * ``NSD``: normalised surface Dice at a tolerance in mm: the fraction of both boundaries lying within the
      tolerance of the other. Boundary elements are boundary voxels (MONAI ``use_subvoxels=False``), the same
      boundaries the distances use.

    Empty-mask policy (:func:`surface_metrics`; Dice/IoU follow nnU-Net):

    ======================  =========  ==================  =====
    reference / prediction  Dice, IoU  HD95, ASD, ASSD     NSD
    ======================  =========  ==================  =====
    both empty              NaN        NaN                 NaN
    exactly one empty       0          image diagonal, mm  0
    ======================  =========  ==================  =====

    *Both empty* is NaN for every metric, as nnU-Net does for Dice: a case where the class appears in neither mask
    says nothing about how well it is segmented, and making it NaN for all metrics keeps every metric of a class
    averaged over the same cases (means skip NaN). *Exactly one empty* is a complete miss or a pure false positive:
    a distance of NaN would drop the worst failures from the mean and flatter the method, so the distance is the
    largest one possible in the image, the diagonal of its physical extent (:func:`image_diagonal_mm`).

``ssl4mis`` mode (voxel units; to compare with BCP / SRA-Seg / UniMatch tables on ACDC)
    Follows SSL4MIS's ``val_2D.calculate_metric_percase`` and BCP's ``test_ACDC.py``: per 3D volume (nnU-Net's 2d
    configuration already stacks its slice predictions into the volume), per class, medpy's ``dc``, ``jc``,
    ``hd95`` and ``asd`` without spacing, and "a missing class scores 0": when the prediction of a class is empty
    every metric of that class is 0, whatever the reference holds. When the prediction is not empty but the
    reference is, medpy's ``dc``/``jc`` give 0 and its ``hd95``/``asd`` raise (SSL4MIS and BCP would crash; ACDC's
    test volumes always contain all three classes); here they are NaN and left out of the means. Note that medpy's
    HD95 is the 95th percentile of the pooled distances of both directions, not MONAI's maximum of the two directed
    percentiles, and that both ``nnunet`` and ``ssl4mis`` distances treat the image border as a boundary.

Singleton axes (2D images stored as ``(1, x, y)`` with nnU-Net's dummy spacing 999) are dropped before any
distance is computed (:func:`drop_singleton_axes`), otherwise every voxel of a 2D mask would count as boundary.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from medpy.metric import binary as medpy_binary
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

MODES = ("nnunet", "ssl4mis")
SURFACE_METRICS = ("HD95", "ASD", "ASSD", "NSD")
DISTANCE_UNIT = {"nnunet": "mm", "ssl4mis": "vox"}
DEFAULT_NSD_TOLERANCE_MM = 2.0
DEFINITIONS = {
    "nnunet": "Dice and IoU from nnU-Net's evaluator; HD95 (max of the two directed 95th percentiles), ASD "
              "(prediction to reference), ASSD (symmetric) and NSD (boundary voxels within the tolerance) from MONAI, "
              "in mm with the voxel spacing. Empty masks: class absent from both reference and prediction -> NaN for "
              "every metric (skipped in means, as nnU-Net does for Dice); absent from exactly one -> Dice, IoU, NSD 0 "
              "and HD95, ASD, ASSD = the image diagonal in mm.",
    "ssl4mis": "SSL4MIS / BCP protocol: per volume and class, medpy dc, jc, hd95, asd in voxel units (no spacing). "
               "A class missing from the prediction scores 0 on every metric; a class predicted but absent from the "
               "reference gets Dice = IoU = 0 and HD95/ASD NaN (SSL4MIS would crash), skipped in means.",
}


def drop_singleton_axes(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float]
                        ) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Remove axes of length 1 (and their spacing) so that a 2D image is measured as 2D."""
    if ref.shape != pred.shape or ref.ndim != len(spacing):
        raise ValueError(f"shapes {ref.shape} / {pred.shape} and spacing {tuple(spacing)} do not match")
    keep = [axis for axis, size in enumerate(ref.shape) if size > 1]
    squeeze = tuple(axis for axis, size in enumerate(ref.shape) if size == 1)
    return (np.squeeze(ref, axis=squeeze), np.squeeze(pred, axis=squeeze),
            tuple(float(spacing[axis]) for axis in keep))


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length of the diagonal of the image's physical extent: the distance used when exactly one mask is empty."""
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing)))


def _batch(mask: np.ndarray) -> torch.Tensor:
    """A binary mask as the one-hot [batch, channel, ...] tensor MONAI's metrics expect."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))[None, None]


@contextmanager
def _single_torch_thread() -> Iterator[None]:
    """MONAI's many tiny tensor operations run 10-30x slower with several intra-op threads on a busy CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _crop_to_union(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union plus one background voxel (where the image allows).

    Boundaries and distances stay exactly the same, and MONAI, which crops the same way but slowly, gets small arrays.
    """
    box = tuple(slice(max(int(axis.min()) - 1, 0), int(axis.max()) + 2) for axis in np.nonzero(pred | ref))
    return pred[box], ref[box]


def surface_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> dict[str, float]:
    """HD95, ASD, ASSD (mm) and NSD of two binary masks with MONAI, under the module's empty-mask policy.

    ``spacing`` is in the masks' axis order (nnU-Net's readers return it that way); singleton axes should already
    be dropped (:func:`drop_singleton_axes`).
    """
    pred, ref = pred.astype(bool), ref.astype(bool)
    pred_empty, ref_empty = not pred.any(), not ref.any()
    if pred_empty and ref_empty:
        return {name: math.nan for name in SURFACE_METRICS}
    if pred_empty or ref_empty:
        worst = image_diagonal_mm(ref.shape, spacing)
        return {"HD95": worst, "ASD": worst, "ASSD": worst, "NSD": 0.0}
    pred, ref = _crop_to_union(pred, ref)
    y_pred, y, spacing = _batch(pred), _batch(ref), tuple(float(s) for s in spacing)
    with warnings.catch_warnings(), _single_torch_thread():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI 1.5+ warns about an argument it passes to itself
        return {
            "HD95": float(compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95,
                                                     spacing=spacing)),
            "ASD": float(compute_average_surface_distance(y_pred, y, include_background=True, symmetric=False,
                                                          spacing=spacing)),
            "ASSD": float(compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True,
                                                           spacing=spacing)),
            "NSD": float(compute_surface_dice(y_pred, y, class_thresholds=[float(nsd_tolerance_mm)],
                                              include_background=True, spacing=spacing)),
        }


def ssl4mis_metrics(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Dice, IoU (Jaccard), HD95 and ASD (voxels) of two binary masks exactly as SSL4MIS / BCP compute them."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    if not pred.any():
        return {"Dice": 0.0, "IoU": 0.0, "HD95": 0.0, "ASD": 0.0}
    overlap = {"Dice": float(medpy_binary.dc(pred, ref)), "IoU": float(medpy_binary.jc(pred, ref))}
    if not ref.any():
        return {**overlap, "HD95": math.nan, "ASD": math.nan}
    return {**overlap, "HD95": float(medpy_binary.hd95(pred, ref)), "ASD": float(medpy_binary.asd(pred, ref))}
