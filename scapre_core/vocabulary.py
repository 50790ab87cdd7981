"""Candidate look-alikes for the focus variant (``look_alikes auto``; beyond the paper): everyday concepts a
text-to-image model knows (the 80 COCO categories, the 10 Imagenette classes, common animals, colours, scenes,
people, art styles and media, and widely known painters). Each is encoded with the model's own text encoder; the
nearest to an erased concept guide it, and all of them (the erased ones left out) are what the focused edit keeps.
"""

from __future__ import annotations

_COCO = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
_IMAGENETTE = (
    "tench", "English springer", "cassette player", "chain saw", "church", "French horn", "garbage truck",
    "gas pump", "golf ball", "parachute",
)
_ANIMALS = (
    "lion", "tiger", "wolf", "fox", "rabbit", "monkey", "fish", "shark", "whale", "dolphin", "eagle", "owl",
    "butterfly", "spider", "snake", "frog", "golden retriever", "husky", "kitten", "puppy",
)
_COLOURS = ("red", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray")
_SCENES = (
    "mountain", "beach", "forest", "city", "castle", "house", "bridge", "river", "ocean", "desert", "sky",
    "sunset", "garden", "road", "flower", "tree",
)
_PEOPLE = ("man", "woman", "child", "baby", "old man", "soldier", "doctor", "face")
_STYLES = (
    "painting", "photograph", "sketch", "watercolor", "oil painting", "cartoon", "anime", "pixel art", "sculpture",
    "impressionism", "cubism", "surrealism", "pop art", "abstract art", "art",
)
_PAINTERS = (
    "Van Gogh", "Claude Monet", "Pablo Picasso", "Salvador Dali", "Leonardo da Vinci", "Rembrandt", "Frida Kahlo",
    "Andy Warhol", "Edvard Munch", "Gustav Klimt", "Paul Cezanne", "Henri Matisse", "Georgia O'Keeffe", "Hokusai",
    "Johannes Vermeer", "Michelangelo", "Caravaggio", "Jackson Pollock", "Paul Gauguin", "Edgar Degas",
    "Wassily Kandinsky", "Rene Magritte", "Thomas Kinkade", "Alphonse Mucha",
)

#: The candidates, each once, in a fixed order.
CANDIDATES: tuple[str, ...] = tuple(dict.fromkeys(
    (*_COCO, *_IMAGENETTE, *_ANIMALS, *_COLOURS, *_SCENES, *_PEOPLE, *_STYLES, *_PAINTERS)))


def candidates_for(concepts: list[str], extra: list[str] = (), pool: tuple[str, ...] = CANDIDATES) -> list[str]:
    """``pool`` and ``extra`` (e.g. the user's preserve prompts) without the erased concepts and without candidates
    that name one of them (case and spacing ignored: erasing "cat" leaves out "Cat" and "cat food"), each once. A
    candidate named inside an erased concept stays (erasing "teddy bear" keeps "bear": a look-alike to keep)."""
    def norm(text: str) -> str:
        return " ".join(text.lower().split())

    erased = [norm(c) for c in concepts]
    out: dict[str, None] = {}
    for cand in (*pool, *extra):
        n = norm(cand)
        if not n or any(f" {e} " in f" {n} " for e in erased):
            continue
        out.setdefault(cand, None)
    return list(out)
