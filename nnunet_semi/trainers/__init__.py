"""Our trainers, one module per method; stock nnU-Net finds them through ``nnunet_semi.env``."""
from nnunet_semi.trainers.mean_teacher import nnUNetTrainerMeanTeacher
from nnunet_semi.trainers.sra_seg import (
    nnUNetTrainerSRASeg,
    nnUNetTrainerSRASeg_dinov2SA,
    nnUNetTrainerSRASeg_effnetSA,
    nnUNetTrainerSRASeg_noSA,
    nnUNetTrainerSRASeg_noWarmup,
)

__all__ = ["nnUNetTrainerMeanTeacher", "nnUNetTrainerSRASeg", "nnUNetTrainerSRASeg_noSA",
           "nnUNetTrainerSRASeg_effnetSA", "nnUNetTrainerSRASeg_dinov2SA", "nnUNetTrainerSRASeg_noWarmup"]
