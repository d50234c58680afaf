"""The embedded "shapes" dataset: coloured shapes on textured backgrounds, drawn from a seed, no files.

Each sample is a pure function of ``(seed, split, index)``: a NumPy generator seeded with that triple draws a
scene (1-3 objects, a background texture), which is rasterised with 2x2 supersampling (antialiased edges).
The label is the class of the first object, which is always the largest; the others are "small".

The nuisance factors are chosen to dominate raw pixel similarity, so that pixels and random encoders score
near chance on a shape-label probe while an encoder that has learnt shape scores high:
- the background fills most pixels, with two random colours and a random texture (stripes, checker, dots,
  smooth noise, gradient) at a random frequency and orientation;
- each shape has a random named colour (jittered), position, size (1.7x range) and rotation.
Shape colours are kept away from the background's colour segment, so every shape stays visible.

Coordinates: pixel (row i, column j) covers [j, j+1) x [i, i+1); boxes are xyxy in those units, the tight box
of the pixels the shape covers by at least half.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from composer.data.collate import collate

SHAPES = ["circle", "square", "triangle", "star", "cross", "ring", "hexagon", "heart", "crescent", "arrow"]
COLOURS = {  # name: RGB in [0, 1]; jittered by +-JITTER per channel when drawn
    "red": (0.85, 0.1, 0.1), "green": (0.1, 0.7, 0.2), "blue": (0.15, 0.3, 0.9), "yellow": (0.95, 0.85, 0.1),
    "orange": (1.0, 0.55, 0.05), "purple": (0.55, 0.2, 0.75), "cyan": (0.1, 0.8, 0.85), "pink": (1.0, 0.5, 0.75),
    "white": (0.97, 0.97, 0.97), "black": (0.05, 0.05, 0.05),
}
TEXTURES = ["striped", "checkered", "dotted", "noisy", "gradient"]
JITTER = 0.05
MIN_CONTRAST = 0.3      # least RGB distance between a shape colour and any mix of the two background colours
LARGE_RADIUS = (0.20, 0.34)   # first object's radius, as a fraction of the image side
SMALL_RADIUS = (0.09, 0.14)   # other objects
_SPLITS = {"train": 0, "val": 1}
# Captions vary, as alt-text does: their opening, whether they name the colours (3 in 4) and the background (1 in
# 2). A text tower trained on them can then read CLIP's "a photo of a {label}." prompts, and colour-free captions
# can only be matched by shape. These are drawn after everything else in a scene, so the images do not depend on
# them.
CAPTION_OPENINGS = ["", "a photo of ", "a picture of ", "an image of "]


@dataclass(frozen=True)
class Shape:
    """One object of a scene: class, colour and pose (centre and radius in pixels, rotation in radians)."""

    shape: str
    colour: str
    rgb: tuple[float, float, float]
    cx: float
    cy: float
    radius: float
    rotation: float


@dataclass(frozen=True, eq=False)  # eq=False: holds an array, compared by identity
class Scene:
    """Everything needed to draw one image: the objects (largest first) and the background."""

    size: int
    objects: tuple[Shape, ...]
    texture: str
    background: tuple[tuple[float, float, float], tuple[float, float, float]]
    frequency: float
    angle: float
    phase: float
    noise: np.ndarray  # (k, k) control grid for the "noisy" texture (unused otherwise)
    caption_opening: str = ""       # one of CAPTION_OPENINGS
    caption_background: bool = True  # whether the caption names the background
    caption_colours: bool = True     # whether the caption names the objects' colours


# ---------------------------------------------------------------- shape masks on local coordinates
# Each takes local coordinates u, v (the shape's frame, unit = its radius) and returns a boolean mask;
# every shape fits inside the unit disk, so a shape of radius r fits in a 2r square around its centre.

def _star_polygon(u: np.ndarray, v: np.ndarray, n: int, outer: float, inner: float) -> np.ndarray:
    """Inside test for an n-fold polygon/star: fold the angle into one half-sector, test one edge."""
    rho = np.hypot(u, v)
    half = math.pi / n
    phi = np.abs(np.mod(np.arctan2(v, u) + half, 2 * half) - half)  # in [0, pi/n], vertex at 0
    px, py = rho * np.cos(phi), rho * np.sin(phi)
    ax, bx, by = outer, inner * math.cos(half), inner * math.sin(half)
    # the origin lies on the positive side of the edge A=(outer, 0) -> B
    return (bx - ax) * py - by * (px - ax) >= 0


def _mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape == "circle":
        return u * u + v * v <= 0.9 ** 2
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.68
    if shape == "triangle":
        return _star_polygon(u, v, 3, 1.0, 0.5)  # regular: inner = outer * cos(pi/n)
    if shape == "hexagon":
        return _star_polygon(u, v, 6, 0.95, 0.95 * math.cos(math.pi / 6))
    if shape == "star":
        return _star_polygon(u, v, 5, 1.0, 0.42)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.26) & (av <= 0.9)) | ((av <= 0.26) & (au <= 0.9))
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 0.92 ** 2) & (r2 >= 0.55 ** 2)
    if shape == "heart":  # (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, scaled into the unit disk, point down
        x, y = 1.25 * u, 0.2 - 1.25 * v
        q = x * x + y * y - 1
        return q * q * q - x * x * y * y * y <= 0
    if shape == "crescent":
        return (u * u + v * v <= 0.92 ** 2) & ((u - 0.42) ** 2 + v * v >= 0.72 ** 2)
    if shape == "arrow":
        shaft = (np.abs(v) <= 0.2) & (u >= -0.9) & (u <= 0.15)
        head = (u >= 0.1) & (np.abs(v) <= 0.62 * (0.92 - u) / 0.82)
        return shaft | head
    raise ValueError(f"unknown shape {shape!r}")


def shape_coverage(obj: Shape, size: int) -> tuple[np.ndarray, int, int]:
    """Antialiased coverage of one object over its bounding square.

    Returns:
        cover: (h, w) float32 in [0, 1], the fraction of each pixel inside the shape (2x2 supersampling);
        x0, y0: the pixel offset of ``cover`` in the image.
    """
    x0, x1 = max(int(obj.cx - obj.radius), 0), min(math.ceil(obj.cx + obj.radius), size)
    y0, y1 = max(int(obj.cy - obj.radius), 0), min(math.ceil(obj.cy + obj.radius), size)
    xs = (x0 + (np.arange(2 * (x1 - x0), dtype=np.float32) + 0.5) / 2 - obj.cx)[None, :]
    ys = (y0 + (np.arange(2 * (y1 - y0), dtype=np.float32) + 0.5) / 2 - obj.cy)[:, None]
    c, s = math.cos(obj.rotation) / obj.radius, math.sin(obj.rotation) / obj.radius
    inside = _mask(obj.shape, xs * c + ys * s, ys * c - xs * s)
    cover = inside.reshape(y1 - y0, 2, x1 - x0, 2).mean(axis=(1, 3), dtype=np.float32)
    return cover, x0, y0


# ---------------------------------------------------------------- backgrounds

def _texture(scene: Scene) -> np.ndarray:
    """(size, size) float32 mixing weight in [0, 1] between the two background colours."""
    n = scene.size
    grid = (np.arange(n, dtype=np.float32) + 0.5) / n
    x, y = grid[None, :], grid[:, None]
    c, s = math.cos(scene.angle), math.sin(scene.angle)
    u, v = x * c + y * s, y * c - x * s
    w = 2 * math.pi * scene.frequency
    if scene.texture == "striped":
        t = 0.5 + 1.5 * np.sin(w * u + scene.phase)
    elif scene.texture == "checkered":
        t = 0.5 + 3.0 * np.sin(w * u + scene.phase) * np.sin(w * v)
    elif scene.texture == "dotted":
        t = 2.0 * (np.cos(w * u + scene.phase) + np.cos(w * v) - 1.0)
    elif scene.texture == "noisy":  # bilinear upsampling of a coarse random grid: A G A^T
        k = scene.noise.shape[0]
        pos = np.clip(grid * (k - 1), 0, k - 1)
        lo = np.minimum(pos.astype(np.int64), k - 2)
        a = np.zeros((n, k), np.float32)
        a[np.arange(n), lo] = 1 - (pos - lo)
        a[np.arange(n), lo + 1] = pos - lo
        t = a @ scene.noise @ a.T
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    else:  # gradient
        t = u - u.min()
        t = t / max(float(t.max()), 1e-6)
    return np.clip(t, 0.0, 1.0, dtype=np.float32)


def render(scene: Scene) -> tuple[np.ndarray, list[np.ndarray]]:
    """Rasterise a scene.

    Returns:
        image: (3, size, size) float32 in [0, 1];
        covers: per object, its (size, size) coverage in [0, 1] (before later objects are drawn over it).
    """
    n = scene.size
    c1, c2 = (np.asarray(c, np.float32)[:, None, None] for c in scene.background)
    image = c1 + (c2 - c1) * _texture(scene)[None]
    covers = []
    for obj in scene.objects:
        cover, x0, y0 = shape_coverage(obj, n)
        h, w = cover.shape
        patch = image[:, y0:y0 + h, x0:x0 + w]
        patch += (np.asarray(obj.rgb, np.float32)[:, None, None] - patch) * cover[None]
        full = np.zeros((n, n), np.float32)
        full[y0:y0 + h, x0:x0 + w] = cover
        covers.append(full)
    return image, covers


def box_of(cover: np.ndarray, obj: Shape) -> list[float]:
    """Tight xyxy box of the pixels covered at least half (pixel j spans [j, j+1)).

    A sliver covering no pixel by half falls back to any coverage, and a shape too small to hit a sample point
    to the bounding square of its disk.
    """
    for covered in (cover >= 0.5, cover > 0):
        rows, cols = np.flatnonzero(covered.any(axis=1)), np.flatnonzero(covered.any(axis=0))
        if rows.size:
            return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]
    return [obj.cx - obj.radius, obj.cy - obj.radius, obj.cx + obj.radius, obj.cy + obj.radius]


# ---------------------------------------------------------------- scene sampling and captions

def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    d = b - a
    t = float(np.clip(np.dot(p - a, d) / max(float(np.dot(d, d)), 1e-9), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * d)))


def sample_scene(rng: np.random.Generator, size: int) -> Scene:
    """Draw one scene; the same generator state always gives the same scene."""
    names = list(COLOURS)
    objects: list[Shape] = []
    for i in range(int(rng.integers(1, 4))):
        lo, hi = LARGE_RADIUS if i == 0 else SMALL_RADIUS
        radius = float(rng.uniform(lo, hi)) * size
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = names[int(rng.integers(len(names)))]
        rgb = tuple(float(c) for c in np.clip(np.asarray(COLOURS[colour]) + rng.uniform(-JITTER, JITTER, 3), 0, 1))
        rotation = float(rng.uniform(0, 2 * math.pi))
        for _ in range(10):  # small objects must not touch earlier ones; give up after a few tries
            cx, cy = rng.uniform(radius, size - radius, 2)
            if all(math.hypot(cx - o.cx, cy - o.cy) >= radius + o.radius + 1 for o in objects):
                objects.append(Shape(shape, colour, rgb, float(cx), float(cy), radius, rotation))
                break
    colours = [np.asarray(o.rgb) for o in objects]
    for _ in range(30):  # background colours far from every shape colour
        c1, c2 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        if all(_segment_distance(c, c1, c2) >= MIN_CONTRAST for c in colours):
            break
    else:  # practically never: a plain background opposite the mean shape colour
        c1 = c2 = np.where(np.mean(colours, axis=0) > 0.5, 0.1, 0.9)
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    return Scene(
        size=size,
        objects=tuple(objects),
        texture=texture,
        background=(tuple(float(c) for c in c1), tuple(float(c) for c in c2)),
        frequency=float(rng.uniform(2.5, 8.0)),   # cycles per image side (period 8-26 px at size 64)
        angle=float(rng.uniform(0, math.pi)),
        phase=float(rng.uniform(0, 2 * math.pi)),
        noise=rng.uniform(0, 1, (int(rng.integers(3, 7)),) * 2).astype(np.float32),
        caption_opening=CAPTION_OPENINGS[int(rng.integers(len(CAPTION_OPENINGS)))],
        caption_background=bool(rng.integers(2)),
        caption_colours=bool(rng.integers(4)),
    )


def caption_of(scene: Scene) -> tuple[str, list[list[list[int]]]]:
    """Caption naming every object, and per object the [start, end) span of its phrase.

    Example: "a red star and a small blue ring on a striped background", with spans [[[2, 10]], [[17, 32]]]
    naming "red star" and "small blue ring"; with the scene's opening and without the background:
    "a photo of a red star and a small blue ring"; without colours: "a star and a small ring".
    """
    text, spans = scene.caption_opening, []
    count = len(scene.objects)
    for i, obj in enumerate(scene.objects):
        if i:
            text += " and " if i == count - 1 else ", "
        phrase = ("small " if i else "") + (f"{obj.colour} " if scene.caption_colours else "") + obj.shape
        text += ("an " if phrase[0] in "aeiou" else "a ")
        spans.append([[len(text), len(text) + len(phrase)]])
        text += phrase
    return text + (f" on a {scene.texture} background" if scene.caption_background else ""), spans


class ShapesDataset(Dataset):
    """Procedural shapes, generated on the fly from ``(seed, split, index)``; no files, no cache.

    Samples follow the raw sample convention: ``image`` uint8 (3, size, size), ``label`` (class of the first,
    largest object), ``caption``, ``boxes`` float32 (n, 4) xyxy pixels, ``tokens_positive`` (one list of
    [start, end) caption spans per box).

    Args:
        n: number of samples.
        size: image side in pixels (at least 16).
        seed: non-negative base seed; the same seed and index always give the same sample.
        split: "train" or "val"; the splits use independent random streams.
    """

    classes = SHAPES

    def __init__(self, n: int = 10000, size: int = 64, seed: int = 0, split: str = "train") -> None:
        if n < 1:
            raise ValueError(f"shapes: n must be >= 1, got {n}")
        if size < 16:
            raise ValueError(f"shapes: size must be >= 16, got {size}")
        if seed < 0:
            raise ValueError(f"shapes: seed must be >= 0, got {seed}")
        if split not in _SPLITS:
            raise ValueError(f"shapes: split must be one of {sorted(_SPLITS)}, got {split!r}")
        self.n, self.size, self.seed, self.split = int(n), int(size), int(seed), split

    def __len__(self) -> int:
        return self.n

    def scene(self, index: int) -> Scene:
        """The scene behind sample ``index`` (what is drawn, before rasterising)."""
        if not 0 <= index < self.n:
            raise IndexError(f"shapes: index {index} out of range for {self.n} samples")
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], int(index)])
        return sample_scene(rng, self.size)

    def __getitem__(self, index: int) -> dict:
        scene = self.scene(index)
        image, covers = render(scene)
        caption, spans = caption_of(scene)
        pixels = (image * 255 + 0.5).astype(np.uint8)
        return {
            "image": torch.from_numpy(pixels),
            "label": SHAPES.index(scene.objects[0].shape),
            "caption": caption,
            "boxes": torch.tensor([box_of(c, o) for c, o in zip(covers, scene.objects)], dtype=torch.float32),
            "tokens_positive": spans,
        }


def example_batch(n: int = 2, size: int = 64, seed: int = 0) -> dict:
    """A collated raw batch of the first ``n`` training samples (used by the graph validator's dry run)."""
    dataset = ShapesDataset(n=n, size=size, seed=seed)
    return collate([dataset[i] for i in range(n)])
