"""PNG grids of images for people to look at (training samples, real vs synthetic after FID)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from nnunet_semi.files import write_atomic

GAP = 2


def to_display(images: np.ndarray) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W', 3]: RGB as is, grey repeated, other channel counts side by side."""
    unit = ((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).round().astype(np.uint8)
    if unit.shape[1] == 3:
        return unit.transpose(0, 2, 3, 1)
    tiled = np.concatenate(list(unit.transpose(1, 0, 2, 3)), axis=-1)  # channels next to each other
    return np.repeat(tiled[..., None], 3, axis=-1)


def tile(images: np.ndarray, columns: int) -> np.ndarray:
    """uint8 [N, H, W, 3] -> one [rows * H, columns * W, 3] mosaic with white gaps."""
    n, h, w, _ = images.shape
    rows = max(1, -(-n // columns))
    canvas = np.full((rows * (h + GAP) - GAP, columns * (w + GAP) - GAP, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * (h + GAP):r * (h + GAP) + h, c * (w + GAP):c * (w + GAP) + w] = image
    return canvas


def save_png_atomic(image: Image.Image, path: Path) -> None:
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def save_image_grid(images: np.ndarray, path: Path, columns: int) -> None:
    """Save images ([N, C, H, W], values in [-1, 1]) as a PNG grid with ``columns`` columns."""
    save_png_atomic(Image.fromarray(tile(to_display(images), columns)), path)


def thumbnails(images: list[np.ndarray], size: int) -> np.ndarray:
    """uint8 images [C, H, W] of any size (C = 1 or 3) -> uint8 [N, size, size, 3] for display."""
    out = []
    for image in images:
        rgb = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image[:3]
        out.append(np.asarray(Image.fromarray(rgb.transpose(1, 2, 0)).resize((size, size), Image.BILINEAR)))
    return np.stack(out) if out else np.zeros((0, size, size, 3), dtype=np.uint8)


def _caption(text: str, width: int) -> np.ndarray:
    header = Image.new("RGB", (width, 14), "white")
    ImageDraw.Draw(header).text((2, 1), text, fill="black")
    return np.asarray(header)


def save_comparison_grid(sections: list[tuple[str, list[np.ndarray], list[np.ndarray]]], path: Path,
                         columns: int = 8, rows: int = 2, size: int = 64) -> None:
    """For each (title, real, synthetic) section: ``rows`` rows of real images above ``rows`` rows of synthetic
    ones, captioned; uint8 [C, H, W] images of any size are shown at ``size`` x ``size``."""
    blocks = []
    width = columns * (size + GAP) - GAP
    for title, real, synthetic in sections:
        for caption, images in ((f"real: {title}", real), (f"synthetic: {title}", synthetic)):
            mosaic = tile(thumbnails(images[:columns * rows], size), columns)
            mosaic = np.pad(mosaic, ((0, 0), (0, width - mosaic.shape[1]), (0, 0)), constant_values=255)
            blocks.extend([_caption(caption, width), mosaic])
        blocks.append(np.full((8, width, 3), 255, dtype=np.uint8))
    save_png_atomic(Image.fromarray(np.concatenate(blocks, axis=0)), path)
