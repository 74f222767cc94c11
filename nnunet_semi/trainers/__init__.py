"""Our trainers, one module per method; stock nnU-Net finds them through ``nnunet_semi.env``."""
from nnunet_semi.trainers.mean_teacher import nnUNetTrainerMeanTeacher

__all__ = ["nnUNetTrainerMeanTeacher"]
