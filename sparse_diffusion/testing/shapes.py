"""Procedural "moving shapes" clips and their prompts: the training data of the project-trained tiny Wan model.

A clip is one anti-aliased shape (circle, square or triangle) of one colour on a dark background, moving in a
straight line (left, right, up or down) at a constant speed; the prompt names all three, e.g.
``"a red circle moving left"``. Sizes and speeds scale with the canvas (radius 15% of the width, travel about
40% of the width over the clip), so the same prompt draws the same picture at any resolution. Everything is
drawn with torch from a seeded ``torch.Generator``: a given seed always gives the same clips.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch


COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.15, 0.1),
    "green": (0.15, 0.8, 0.2),
    "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1),
    "purple": (0.6, 0.2, 0.85),
    "white": (0.95, 0.95, 0.95),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
BACKGROUND = 0.08


@dataclass(frozen=True)
class ClipSpec:
    """One clip: what to draw and where. Positions and radius are fractions of the canvas width/height."""

    colour: str
    shape: str
    direction: str
    start: tuple[float, float]  # (x, y) of the centre at frame 0, fractions of width / height
    travel: float  # distance covered over the clip, fraction of the canvas side along the motion

    @property
    def prompt(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction}"


RADIUS = 0.15


def all_prompts() -> list[str]:
    """Every prompt the model was trained on (6 colours x 3 shapes x 4 directions = 72)."""
    return [f"a {c} {s} moving {d}" for c in COLOURS for s in SHAPES for d in DIRECTIONS]


#: Fixed prompts of the quality curve and the CI quality test.
QUALITY_PROMPTS: tuple[str, ...] = (
    "a red circle moving left",
    "a blue square moving down",
    "a yellow triangle moving right",
    "a green circle moving up",
)


def random_spec(gen: torch.Generator) -> ClipSpec:
    """A random clip whose shape stays fully inside the canvas for the whole clip."""

    def pick(seq):
        return seq[int(torch.randint(len(seq), (1,), generator=gen))]

    def uniform(lo, hi):
        return lo + (hi - lo) * float(torch.rand((), generator=gen))

    colour, shape, direction = pick(list(COLOURS)), pick(SHAPES), pick(list(DIRECTIONS))
    travel = uniform(0.3, 0.5)
    lo, hi = RADIUS + 0.02, 1.0 - RADIUS - 0.02
    dx, dy = DIRECTIONS[direction]
    along = uniform(lo, hi - travel)  # start along the motion, measured in its own direction
    across = uniform(lo, hi)
    if dx:
        x = along if dx > 0 else 1.0 - along
        start = (x, across)
    else:
        y = along if dy > 0 else 1.0 - along
        start = (across, y)
    return ClipSpec(colour, shape, direction, start, travel)


def _signed_distance(shape: str, px: torch.Tensor, py: torch.Tensor, r: float) -> torch.Tensor:
    """Signed distance in pixels from points (px, py) (relative to the centre) to the shape's edge."""
    if shape == "circle":
        return torch.sqrt(px * px + py * py) - r
    if shape == "square":
        s = r * 0.85
        return torch.maximum(px.abs(), py.abs()) - s
    if shape == "triangle":  # equilateral, pointing up, circumradius r
        k = math.sqrt(3.0)
        edges = [
            py - r / 2,  # bottom edge
            (k * px - py - r) / 2,  # right edge
            (-k * px - py - r) / 2,  # left edge
        ]
        return torch.stack(torch.broadcast_tensors(*edges)).amax(0)
    raise ValueError(f"unknown shape {shape!r}")


def render(spec: ClipSpec, num_frames: int, height: int, width: int) -> torch.Tensor:
    """Draws ``spec`` as a float32 video ``[3, num_frames, height, width]`` in [0, 1]."""
    t = torch.linspace(0.0, 1.0, num_frames).view(-1, 1, 1)
    dx, dy = DIRECTIONS[spec.direction]
    cx = (spec.start[0] + dx * spec.travel * t) * width
    cy = (spec.start[1] + dy * spec.travel * t) * height
    ys = torch.arange(height, dtype=torch.float32).view(1, -1, 1) + 0.5
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, -1) + 0.5
    r = RADIUS * min(height, width)
    alpha = (0.5 - _signed_distance(spec.shape, xs - cx, ys - cy, r)).clamp(0.0, 1.0)  # [F, H, W]
    colour = torch.tensor(COLOURS[spec.colour]).view(3, 1, 1, 1)
    return BACKGROUND + (colour - BACKGROUND) * alpha.unsqueeze(0)


def random_batch(gen: torch.Generator, batch: int, num_frames: int, height: int, width: int):
    """``batch`` random clips ``[B, 3, F, H, W]`` in [0, 1] and their prompts."""
    specs = [random_spec(gen) for _ in range(batch)]
    return torch.stack([render(s, num_frames, height, width) for s in specs]), [s.prompt for s in specs]


#: `PromptCheck.follows` bounds: the largest centroid move between two frames (fraction of the frame) and the
#: foreground's spread against a disc of the same area, above which a clip shows a jump or more than one object.
MAX_STEP = 0.08
MAX_SPREAD = 1.5


@dataclass(frozen=True)
class PromptCheck:
    """How well a clip shows its prompt (see ``check_prompt``). Fractions of the canvas for motion."""

    colour_match: float  # mean over frames of the share of foreground pixels nearest the prompted colour
    along: float  # foreground centroid displacement, first -> last frame, along the prompted direction
    across: float  # the same, perpendicular to it (signed)
    foreground: float  # mean share of pixels that differ from the background
    max_step: float = 0.0  # largest centroid move between consecutive frames with foreground (a jump, not motion)
    max_spread: float = 0.0  # largest per-frame RMS distance of the foreground from its centroid over that of a disc
    # of the same area: 1.0 for a disc, about 1.02 for a square, 2.1 for two equal discs four radii apart

    @property
    def follows(self) -> bool:
        """Right colour on most of the foreground, a move of >= 0.15 canvas mostly in the prompted direction, made
        in steps of <= MAX_STEP canvas per frame by one compact object (spread <= MAX_SPREAD): a copy that appears
        elsewhere while the original fades is not motion."""
        return (
            self.colour_match >= 0.5
            and self.along >= 0.15
            and abs(self.across) < self.along
            and self.max_step <= MAX_STEP
            and self.max_spread <= MAX_SPREAD
        )


def parse_prompt(prompt: str) -> tuple[str, str]:
    """(colour, direction) named by a prompt such as ``"A red circle, moving left."`` (case and punctuation ignored).

    Raises:
        ValueError: the prompt names no colour of ``COLOURS`` or no direction of ``DIRECTIONS``, or more than one.
    """
    words = re.findall(r"[a-z]+", prompt.lower())
    colours = sorted({w for w in words if w in COLOURS})
    directions = sorted({w for w in words if w in DIRECTIONS})
    if len(colours) != 1 or len(directions) != 1:
        raise ValueError(
            f"prompt {prompt!r} must name exactly one colour of {list(COLOURS)} and one direction of "
            f"{list(DIRECTIONS)}; it names {colours or 'no colour'} and {directions or 'no direction'}"
        )
    return colours[0], directions[0]


def check_prompt(video, prompt: str) -> PromptCheck:
    """Measures whether ``video`` shows ``prompt`` (``"a <colour> <shape> moving <direction>"``, see ``parse_prompt``).

    ``video``: frames ``[F, H, W, 3]`` (numpy or torch, any device), float in [0, 1] (what ``output_type="np"``
    returns) or uint8 in 0..255 (what ``media.read_frames`` returns). A pixel is foreground when a channel differs
    from the background by more than 0.25. Motion is the foreground centroid's move from the first to the last frame
    that has foreground, in fractions of the width (left/right) or height (up/down); the largest move between two
    consecutive frames and the foreground's spread around its centroid flag jumps and duplicated objects. The shape
    is not judged.

    Raises:
        ValueError: the prompt does not name one colour and one direction; the video is not [F, H, W, 3] with F >= 1,
            holds NaN/inf, or float values outside [0, 1].
    """
    colour, direction = parse_prompt(prompt)
    if hasattr(video, "__array_interface__") and not isinstance(video, torch.Tensor):
        import numpy as np

        video = np.ascontiguousarray(video)  # torch refuses negative strides (e.g. frames[::-1])
    v = torch.as_tensor(video).detach().cpu()
    if v.dim() != 4 or v.shape[-1] != 3 or v.shape[0] == 0:
        raise ValueError(f"video must be [F, H, W, 3] with F >= 1, got {tuple(v.shape)}")
    v = v.float() / 255.0 if v.dtype == torch.uint8 else v.float()
    if not torch.isfinite(v).all():
        raise ValueError("video holds NaN or inf values; a diverged generation cannot be judged")
    if v.min() < -0.01 or v.max() > 1.01:
        raise ValueError(
            f"video values span [{float(v.min()):.3g}, {float(v.max()):.3g}]; give floats in [0, 1] or uint8 frames"
        )
    frames, height, width = v.shape[:3]
    fg = (v - BACKGROUND).abs().amax(-1) > 0.25
    # nearest palette colour per pixel, one colour at a time (a [F, H, W, 6, 3] difference would be 6x the video)
    nearest = torch.stack([((v - torch.tensor(c)) ** 2).sum(-1) for c in COLOURS.values()], -1).argmin(-1)
    match = nearest == list(COLOURS).index(colour)
    counts = fg.sum((1, 2))
    colour_match = float(((match & fg).sum((1, 2)) / counts.clamp(min=1)).mean())
    ys = torch.arange(height, dtype=torch.float32).view(1, -1, 1) / height
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, -1) / width
    seen = counts > 0
    along = across = max_step = max_spread = 0.0
    if bool(seen.any()):
        w = fg.float()[seen]
        total = w.sum((1, 2))
        cx = (w * xs).sum((1, 2)) / total
        cy = (w * ys).sum((1, 2)) / total
        spread = ((w * ((xs - cx.view(-1, 1, 1)) ** 2 + (ys - cy.view(-1, 1, 1)) ** 2)).sum((1, 2)) / total).sqrt()
        disc = (total / (height * width) / (2 * math.pi)).sqrt()  # RMS radius of a disc of the same area
        max_spread = float((spread / disc).max())
        if len(cx) >= 2:
            mx, my = float(cx[-1] - cx[0]), float(cy[-1] - cy[0])
            dx, dy = DIRECTIONS[direction]
            along, across = mx * dx + my * dy, mx * dy - my * dx
            max_step = float(torch.hypot(cx.diff(), cy.diff()).max())
    # + 0.0: no -0.0
    return PromptCheck(colour_match, along + 0.0, across + 0.0, float(fg.float().mean()), max_step, max_spread)
