"""End to end through the unmodified nnU-Net commands in 3d_fullres: SCDL over Mean Teacher, SRA-Seg, and
what SemiGDA refuses.

Toy workspaces and helpers: tests/e2e_support.py.
"""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from e2e_support import assert_terms_logged

pytestmark = pytest.mark.e2e


def test_3d_fullres_scdl_over_mean_teacher_and_sra_seg_train_and_predict(toy_3d):
    dataset = "Dataset512_Toy3DSemi3"
    # SCDL runs Mean Teacher's whole step plus its own terms
    scdl_terms = ("loss_consistency", "loss_e2p", "loss_p2e", "loss_sac")
    for trainer, terms in (("nnUNetTrainerSCDL_2epochs_3its", scdl_terms),
                           ("nnUNetTrainerSRASeg_effnetSA_2epochs_3its", ("loss_seg", "loss_sa", "domain_gap"))):
        toy_3d.train(512, "3d_fullres", trainer)
        final = toy_3d.checkpoint(dataset, trainer, "3d_fullres")
        assert final["semi_state"]["global_step"] == 6
        assert_terms_logged(final, terms, 2)
        assert np.isfinite(final["logging"][terms[0]][-1])
        images, predictions = toy_3d.predict_test_set(dataset, 512, "3d_fullres", trainer)
        assert len(list(predictions.glob("*.nii.gz"))) == len(list(images.glob("*.nii.gz"))) > 0

def test_semigda_refuses_3d_before_training(toy_3d):
    command = ["nnUNetv2_train", "512", "3d_fullres", "0", "-tr", "nnUNetTrainerSemiGDA_TAESD", "-device", "cpu"]
    shown = subprocess.run(command, env=toy_3d.env, capture_output=True, text=True)
    assert shown.returncode != 0 and "works on 2D images only: train configuration '2d'" in shown.stderr
    assert not toy_3d.fold_dir("Dataset512_Toy3DSemi3", "nnUNetTrainerSemiGDA_TAESD", "3d_fullres").exists()
