"""nnU-Net's local logger, extended with the extra loss terms of semi-supervised trainers."""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402
from PIL import Image  # noqa: E402

from nnunet_semi.files import write_atomic  # noqa: E402


class SemiLocalLogger(LocalLogger):
    """Logs ``terms`` once per epoch like nnU-Net's own values (so they are checkpointed with them) and appends a
    panel with their curves to nnU-Net's ``progress.png``."""

    def __init__(self, base: LocalLogger, terms: Sequence[str]):
        super().__init__(base.verbose)
        self.my_fantastic_logging = base.my_fantastic_logging
        self.terms = tuple(terms)
        self._add_terms()

    def _add_terms(self) -> None:
        """Terms a loaded checkpoint lacks (added to the trainer since it was written) are NaN for its epochs."""
        epochs = len(self.my_fantastic_logging.get("epoch_end_timestamps", []))
        for term in self.terms:
            self.my_fantastic_logging.setdefault(term, [float("nan")] * epochs)

    def load_checkpoint(self, checkpoint: dict) -> None:
        super().load_checkpoint(checkpoint)
        self._add_terms()

    def plot_progress_png(self, output_folder: str) -> None:
        super().plot_progress_png(output_folder)
        if self.terms:
            path = os.path.join(output_folder, "progress.png")
            _save_atomic(_stack_vertically(Image.open(path), self._terms_panel()), path)

    def _terms_panel(self) -> Image.Image:
        fig, ax = plt.subplots(1, 1, figsize=(30, 14))
        for term in self.terms:
            values = self.my_fantastic_logging[term]
            ax.plot(range(len(values)), values, ls="-", label=term, linewidth=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel("semi-supervised terms")
        ax.legend(loc=(0, 1), ncol=len(self.terms))
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        buffer.seek(0)
        return Image.open(buffer)


def _stack_vertically(top: Image.Image, bottom: Image.Image) -> Image.Image:
    bottom = bottom.resize((top.width, round(bottom.height * top.width / bottom.width)))
    canvas = Image.new("RGB", (top.width, top.height + bottom.height), "white")
    canvas.paste(top.convert("RGB"), (0, 0))
    canvas.paste(bottom.convert("RGB"), (0, top.height))
    return canvas


def _save_atomic(image: Image.Image, path: str) -> None:
    write_atomic(Path(path), lambda tmp: image.save(tmp, format="PNG"))
