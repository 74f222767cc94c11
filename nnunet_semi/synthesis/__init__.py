"""Class-specific StyleGAN2-ADA generators that feed nnU-Net raw datasets, with FID (see README.md here)."""
