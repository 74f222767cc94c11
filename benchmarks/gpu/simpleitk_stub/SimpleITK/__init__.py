"""Stand-in for SimpleITK on the GPU kit's device machine, whose 53 MB wheel does not fit the kit's 60 MiB.

nnU-Net and its augmentation libraries import SimpleITK at module level but use it only for medical image formats
(NIfTI, MHA, NRRD); the kit's 2D PNG dataset goes through nnU-Net's NaturalImage2DIO. Any use of SimpleITK fails
here with this explanation instead of a silent wrong result.
"""


def __getattr__(name: str):
    if name.startswith("_"):  # probes such as hasattr(SimpleITK, "_x") and module machinery
        raise AttributeError(name)
    raise ImportError(f"SimpleITK.{name}: SimpleITK is not installed on this machine (the GPU kit replaces it with "
                      f"benchmarks/gpu/simpleitk_stub, enough for 2D PNG datasets). Carry its wheel to read medical "
                      f"image formats.")
