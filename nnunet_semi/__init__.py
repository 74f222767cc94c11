"""nnunet-semi: semi-supervised and generative training for nnU-Net v2."""

__version__ = "0.1.0"
