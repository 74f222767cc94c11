"""``nnunet-semi classify``: image-level classification with SSGNet's class-balanced synthetic augmentation."""
