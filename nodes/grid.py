"""The compare node's picture: one labelled row per prompt (originals | edited), split into pages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

#: Longest side of one image in the grid (larger generations are shrunk for the overview).
CELL = 256
ROWS_PER_PAGE = 8
LABEL_H = 22
HEADER_H = 24
GAP = 4
MIN_WIDTH = 512  # room for the labels
BACKGROUND = 0.12
TEXT = (235, 235, 235)


@dataclass(frozen=True)
class GridRow:
    label: str
    original: torch.Tensor  # [k, H, W, 3]
    edited: torch.Tensor  # [k, H, W, 3]


def _cells(images: torch.Tensor) -> torch.Tensor:
    """``[k, h, w, 3]`` shrunk (area average, deterministic) so the longest side is at most CELL."""
    _, h, w, _ = images.shape
    scale = min(1.0, CELL / max(h, w))
    if scale == 1.0:
        return images.detach().float().clamp(0, 1)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = torch.nn.functional.interpolate(images.detach().float().permute(0, 3, 1, 2), size=size, mode="area")
    return x.permute(0, 2, 3, 1).clamp(0, 1)


def _text(canvas: np.ndarray, lines: Sequence[tuple[int, int, str]]) -> np.ndarray:
    """Draw ``(x, y, text)`` onto an HxWx3 uint8 array with PIL's built-in font."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for x, y, text in lines:
        draw.text((x, y), text, fill=TEXT, font=font)
    return np.asarray(image)


def _fit(text: str, width_px: int) -> str:
    """Shorten ``text`` to about ``width_px`` pixels of the default font (about 6 px a character)."""
    limit = max(8, width_px // 6)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def render_pages(rows: Sequence[GridRow], rows_per_page: int = ROWS_PER_PAGE) -> tuple[torch.Tensor, list[list[str]]]:
    """The grid as a batch of equal-size pages ``[P, H, W, 3]`` and the row labels of each page.

    Each row: a label band (the row's ``label``), then its originals, a gap, its edited images. A page
    starts with a header naming the two halves. The last page is padded with empty rows."""
    if not rows:
        raise ValueError("nothing to draw: no prompts were compared")
    cells = [(_cells(r.original), _cells(r.edited)) for r in rows]
    k, ch, cw = cells[0][0].shape[0], cells[0][0].shape[1], cells[0][0].shape[2]
    half = k * cw + (k - 1) * GAP
    width = max(2 * half + 3 * GAP * 2, MIN_WIDTH)
    row_h = LABEL_H + ch + GAP
    per_page = max(1, rows_per_page)
    pages_n = -(-len(rows) // per_page)
    height = HEADER_H + per_page * row_h
    pages, labels = [], []
    for p in range(pages_n):
        canvas = torch.full((height, width, 3), BACKGROUND)
        text = [(GAP * 2, 6, "original"), (half + GAP * 4, 6, "edited")]
        if pages_n > 1:
            text.append((width - 80, 6, f"page {p + 1}/{pages_n}"))
        page_labels = []
        for i, ((orig, edit), row) in enumerate(zip(cells[p * per_page:(p + 1) * per_page],
                                                    rows[p * per_page:(p + 1) * per_page], strict=True)):
            top = HEADER_H + i * row_h
            label = _fit(row.label, width - 4 * GAP)
            text.append((GAP * 2, top + 5, label))
            page_labels.append(label)
            y = top + LABEL_H
            for j in range(k):
                x = GAP * 2 + j * (cw + GAP)  # originals from the left margin, edited after a wider gap
                canvas[y:y + ch, x:x + cw] = orig[j]
                canvas[y:y + ch, x + half + GAP * 2:x + half + GAP * 2 + cw] = edit[j]
        array = (canvas.numpy() * 255.0 + 0.5).astype(np.uint8)
        array = _text(array, text)
        pages.append(torch.from_numpy(array.astype(np.float32) / 255.0))
        labels.append(page_labels)
    return torch.stack(pages), labels
