"""Scenes of coloured shapes, their pictures, questions and captions (used by ``synthetic.py``).

A scene holds 1-3 objects, each a distinct shape with a distinct colour at a distinct position,
so every question below has exactly one right answer. Everything is a pure function of the
scene and a ``random.Random``, so the same seed gives the same set.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 80, 230),
    "yellow": (235, 200, 20), "purple": (140, 50, 180), "orange": (245, 130, 20),
}
# Centres as fractions of the side; with the radii below no two objects overlap.
POSITIONS = {"left": (0.18, 0.5), "top": (0.5, 0.18), "centre": (0.5, 0.5), "bottom": (0.5, 0.82),
             "right": (0.82, 0.5)}
PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
           "centre": "in the centre"}
SIZES = {"small": 0.10, "large": 0.15}  # radius / side
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
QUESTION_TYPES = ("colour", "shape", "count", "position", "exists", "size")
CAPTION_PROMPT = "Describe the image."


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    position: str
    size: str


def random_scene(rng: random.Random) -> list[Obj]:
    """1-3 objects, listed in reading order (left, top, centre, bottom, right)."""
    n = rng.choice((1, 2, 3))
    shapes, colours = rng.sample(SHAPES, n), rng.sample(sorted(COLOURS), n)
    positions = rng.sample(list(POSITIONS), n)
    objs = [Obj(s, c, p, rng.choice(sorted(SIZES))) for s, c, p in zip(shapes, colours, positions)]
    order = list(POSITIONS)
    return sorted(objs, key=lambda o: order.index(o.position))


def draw_scene(objs: list[Obj], size: int) -> Image.Image:
    """White ``size x size`` RGB picture of the objects (aliased drawing, so pure colours)."""
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for o in objs:
        fx, fy = POSITIONS[o.position]
        cx, cy, r = fx * size, fy * size, SIZES[o.size] * size
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif o.shape == "square":
            h = 0.85 * r  # same visual weight as the circle
            draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - 0.87 * r, cy + 0.5 * r), (cx + 0.87 * r, cy + 0.5 * r)], fill=fill)
    return img


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def captions(objs: list[Obj]) -> list[str]:
    """Four reference phrasings; the first is the canonical one used for training."""
    n = len(objs)
    full = [f"a {o.size} {o.colour} {o.shape} {PHRASES[o.position]}" for o in objs]
    short = [f"a {o.colour} {o.shape}" for o in objs]
    placed = [f"a {o.colour} {o.shape} {PHRASES[o.position]}" for o in objs]
    count = f"There {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} shape{'s' if n > 1 else ''}: "
    return [
        _cap(_join(full)) + ".",
        count + _join(short) + ".",
        "An image of " + _join(placed) + ".",
        _cap(_join(short)) + " on a white background.",
    ]


def question(objs: list[Obj], kind: str, rng: random.Random) -> tuple[str, str]:
    """``(question, answer)`` of type ``kind``; answers are one word or a digit."""
    o = rng.choice(objs)
    if kind == "colour":
        return f"What colour is the {o.shape}?", o.colour
    if kind == "shape":
        return f"What shape is the {o.colour} object?", o.shape
    if kind == "count":
        return "How many shapes are there?", str(len(objs))
    if kind == "position":
        return f"Where is the {o.colour} {o.shape}?", o.position
    if kind == "size":
        return f"Is the {o.shape} small or large?", o.size
    if kind == "exists":
        if rng.random() < 0.5:
            return f"Is there a {o.colour} {o.shape}?", "yes"
        present = {(x.colour, x.shape) for x in objs}
        absent = [(c, s) for c in sorted(COLOURS) for s in SHAPES if (c, s) not in present]
        c, s = rng.choice(absent)
        return f"Is there a {c} {s}?", "no"
    raise ValueError(f"question type {kind!r} unknown; valid: {', '.join(QUESTION_TYPES)}")


def scene_dict(objs: list[Obj]) -> list[dict[str, str]]:
    return [asdict(o) for o in objs]


def vocabulary() -> list[str]:
    """Every word the generator can write, for tokenizer training."""
    words = [*SHAPES, *COLOURS, *POSITIONS, *PHRASES.values(), *SIZES, *NUMBER_WORDS.values(), "1", "2", "3",
             "yes", "no", CAPTION_PROMPT]
    probe = [Obj(s, c, p, z) for s, c, p, z in zip(SHAPES, sorted(COLOURS), POSITIONS, sorted(SIZES) * 2)]
    rng = random.Random(0)
    for n in (1, 2, 3):
        words += captions(probe[:n])
        words += [question(probe[:n], k, rng)[0] for k in QUESTION_TYPES]
    return words
