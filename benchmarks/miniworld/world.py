"""The world's data: procedural pictures of coloured shapes with styles, their prompts, and a word tokenizer.

Every picture is one shape on a black background: a colour (10, with look-alikes red/orange/pink and
cyan/blue/purple), a shape (6, with look-alikes circle/ring and square/bar), a style (solid, or striped, dotted,
outlined), at a random size and place. Prompts name what is drawn through one of several templates
("a red circle", "a picture of a striped red circle", ...); solid is the style a prompt does not name. Some
prompts name only the colour or only the shape (the rest is then random), and some are empty (for
classifier-free guidance), so that bare words such as "red" mean something to the model, as in SD.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 140, 10),
    "pink": (250, 110, 190),
    "yellow": (240, 230, 40),
    "green": (30, 170, 50),
    "cyan": (20, 210, 220),
    "blue": (30, 60, 240),
    "purple": (140, 40, 200),
    "brown": (130, 80, 30),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "ring", "square", "bar", "triangle", "cross")
STYLES = ("solid", "striped", "dotted", "outlined")  # "solid" is never said: a prompt without a style means it
COLOUR_NAMES = tuple(COLOURS)

#: Look-alike groups: every member is a look-alike of the others.
LOOKALIKE_GROUPS = (
    ("red", "orange", "pink"),
    ("cyan", "blue", "purple"),
    ("circle", "ring"),
    ("square", "bar"),
    ("striped", "dotted"),
)

TEMPLATES = ("{}", "a {}", "a picture of a {}", "a photo of a {}", "an image of a {}")
SPECIALS = ("<start>", "<end>")
WORDS = ("a", "an", "picture", "photo", "image", "of", *COLOURS, *SHAPES, *STYLES[1:])
VOCAB = {w: i for i, w in enumerate(SPECIALS + WORDS)}
START, END = VOCAB["<start>"], VOCAB["<end>"]
CONTEXT = 77  # CLIP's context length: start token, words, end token, then end tokens as padding

#: How often a training prompt names: everything, only the colour (+style), only the shape, nothing.
PROMPT_KINDS = {"full": 0.72, "colour": 0.09, "shape": 0.09, "empty": 0.10}
STYLE_P = (0.4, 0.2, 0.2, 0.2)  # solid, striped, dotted, outlined
COLOUR_JITTER = 12.0 / 255.0


def lookalikes(word: str) -> tuple[str, ...]:
    """The other members of ``word``'s look-alike group (empty when it has none)."""
    for group in LOOKALIKE_GROUPS:
        if word in group:
            return tuple(w for w in group if w != word)
    return ()


def tokenize(text: str) -> tuple[torch.Tensor, int]:
    """CLIP's conventions at word level: ``[start, words..., end, end, ...]`` of length 77, and the index of the
    last word token (0 for the empty prompt, whose last token before the end is the start token)."""
    words = text.split()
    unknown = [w for w in words if w not in VOCAB or w in SPECIALS]
    if unknown:
        raise ValueError(f"unknown word(s) {unknown} in {text!r}; the world knows {list(WORDS)}")
    if len(words) > CONTEXT - 2:
        raise ValueError(f"prompt {text!r} is longer than {CONTEXT - 2} words")
    ids = torch.full((CONTEXT,), END, dtype=torch.long)
    ids[0] = START
    ids[1:1 + len(words)] = torch.tensor([VOCAB[w] for w in words], dtype=torch.long)
    return ids, len(words)


def prompt(colour: str | None, shape: str | None, style: str = "solid", template: int = 1) -> str:
    """The prompt naming what is given; ``None`` leaves that attribute unnamed."""
    words = [w for w in ((style if style != "solid" else None), colour, shape) if w]
    if not words:
        return ""
    return TEMPLATES[template].format(" ".join(words))


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # [n, 3, S, S] in [-1, 1]
    colour: torch.Tensor  # [n] indices into COLOUR_NAMES
    shape: torch.Tensor  # [n] indices into SHAPES
    style: torch.Tensor  # [n] indices into STYLES
    prompts: tuple[str, ...]


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    return coords.view(1, 1, size), coords.view(1, size, 1)  # x [1, 1, S], y [1, S, 1]


def shape_masks(shape: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, r: torch.Tensor, size: int) -> torch.Tensor:
    """``[n, S, S]`` boolean masks of shapes ``shape`` (indices) centred at ``(cx, cy)`` with half-size ``r``."""
    x, y = _grid(size)
    dx = x - cx.view(-1, 1, 1)
    dy = y - cy.view(-1, 1, 1)
    r = r.view(-1, 1, 1)
    dist = (dx * dx + dy * dy).sqrt()
    masks = torch.stack([
        dist <= r,  # circle
        (dist <= r) & (dist >= 0.55 * r),  # ring
        (dx.abs() <= 0.8 * r) & (dy.abs() <= 0.8 * r),  # square
        (dx.abs() <= r) & (dy.abs() <= 0.4 * r),  # bar
        (dy <= 0.8 * r) & (dy >= -0.9 * r) & (dx.abs() <= 0.6 * (dy + 0.9 * r)),  # triangle, apex up
        ((dx.abs() <= 0.3 * r) & (dy.abs() <= r)) | ((dy.abs() <= 0.3 * r) & (dx.abs() <= r)),  # cross
    ])  # [6, n, S, S]
    return masks[shape, torch.arange(shape.shape[0])]


def style_masks(masks: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Apply styles: solid keeps the mask, striped keeps diagonal stripes, dotted a grid of 2x2 dots 1 pixel apart,
    outlined the 1-pixel border."""
    size = masks.shape[-1]
    x, y = _grid(size)
    x, y = (x - 0.5).long(), (y - 0.5).long()
    stripes = ((x + y) // 2) % 2 == 0
    dots = (x % 3 < 2) & (y % 3 < 2)
    m = masks.float().unsqueeze(1)
    eroded = -F.max_pool2d(-F.pad(m, (1, 1, 1, 1), value=0.0), 3, stride=1)
    outline = (m - eroded).squeeze(1) > 0.5
    options = torch.stack([masks, masks & stripes, masks & dots, outline])  # [4, n, S, S]
    return options[style, torch.arange(style.shape[0])]


def render(colour: torch.Tensor, shape: torch.Tensor, style: torch.Tensor, g: torch.Generator,
           size: int = 16) -> torch.Tensor:
    """``[n, 3, S, S]`` pictures in [-1, 1]: random half-size 0.3-0.44 of the image, random place inside it, the
    colour jittered a little."""
    n = colour.shape[0]
    r = size * (0.30 + 0.14 * torch.rand(n, generator=g))
    cx = r + (size - 2 * r) * torch.rand(n, generator=g)
    cy = r + (size - 2 * r) * torch.rand(n, generator=g)
    mask = style_masks(shape_masks(shape, cx, cy, r, size), style)
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255.0
    rgb = (palette[colour] + COLOUR_JITTER * (2 * torch.rand(n, 3, generator=g) - 1)).clamp(0, 1)
    img = mask.unsqueeze(1).float() * rgb.view(n, 3, 1, 1)
    return img * 2 - 1


def sample_batch(n: int, g: torch.Generator, size: int = 16, with_prompts: bool = True,
                 colours_only: bool = False) -> Batch:
    """``n`` random pictures and, with ``with_prompts``, a training prompt for each (see ``PROMPT_KINDS``).

    ``colours_only`` draws a simpler world for quick tests: solid circles of every colour, prompts naming colour
    and shape, or empty."""
    colour = torch.randint(len(COLOURS), (n,), generator=g)
    if colours_only:
        shape = torch.zeros(n, dtype=torch.long)
        style = torch.zeros(n, dtype=torch.long)
        kind_p = [PROMPT_KINDS["full"], 0.0, 0.0, PROMPT_KINDS["empty"]]
    else:
        shape = torch.randint(len(SHAPES), (n,), generator=g)
        style = torch.multinomial(torch.tensor(STYLE_P), n, replacement=True, generator=g)
        kind_p = list(PROMPT_KINDS.values())
    images = render(colour, shape, style, g, size)
    prompts: tuple[str, ...] = ()
    if with_prompts:
        kinds = torch.multinomial(torch.tensor(kind_p), n, replacement=True, generator=g)
        templates = torch.randint(len(TEMPLATES), (n,), generator=g)
        names = list(PROMPT_KINDS)
        out = []
        for i in range(n):
            kind = names[int(kinds[i])]
            c, s, st = COLOUR_NAMES[int(colour[i])], SHAPES[int(shape[i])], STYLES[int(style[i])]
            t = int(templates[i])
            if kind == "full":
                out.append(prompt(c, s, st, t))
            elif kind == "colour":
                out.append(prompt(c, None, st, t))
            elif kind == "shape":
                out.append(prompt(None, s, st, t))
            else:
                out.append("")
        prompts = tuple(out)
    return Batch(images, colour, shape, style, prompts)
