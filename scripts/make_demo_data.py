"""Regenerate data/: a handful of small demo images and a 200-row manifest.

    python scripts/make_demo_data.py

Deterministic: the same files every time. Remote rows use example.com URLs,
which the simulator answers without fetching (nothing leaves the machine).
"""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent / "data"
SHAPES = [
    ("sunset", "JPEG", (320, 200), (250, 120, 40)),
    ("forest", "PNG", (256, 256), (30, 120, 50)),
    ("ocean", "WEBP", (300, 180), (20, 80, 200)),
    ("desert", "JPEG", (400, 240), (220, 190, 120)),
    ("night", "PNG", (200, 200), (15, 15, 50)),
    ("snow", "GIF", (240, 160), (235, 240, 250)),
    ("city", "JPEG", (360, 240), (110, 110, 120)),
    ("meadow", "PNG", (280, 210), (120, 200, 80)),
]
CATEGORIES = ["landscape", "street", "portrait", "product", "animal"]


def make_images() -> list[str]:
    (ROOT / "images").mkdir(parents=True, exist_ok=True)
    names = []
    for i, (name, fmt, size, color) in enumerate(SHAPES):
        im = Image.new("RGB", size, color)
        draw = ImageDraw.Draw(im)
        w, h = size
        draw.ellipse(
            (w // 4, h // 4, w // 4 + h // 2, h // 4 + h // 2), fill=(255 - color[0], 255 - color[1], 255 - color[2])
        )
        draw.rectangle((0, h - h // 5, w, h), fill=(color[0] // 2, color[1] // 2, color[2] // 2))
        suffix = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}[fmt]
        filename = f"{i + 1:02d}_{name}.{suffix}"
        im.save(ROOT / "images" / filename, format=fmt)
        names.append(f"images/{filename}")
    return names


def make_manifest(local: list[str]) -> None:
    with open(ROOT / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "url", "category"])
        for n in range(200):
            if n % 5 == 0:
                url = local[(n // 5) % len(local)]
            else:
                url = f"https://images.example.com/demo/{n:04d}.jpg"
            writer.writerow([f"demo-{n:04d}", url, CATEGORIES[n % len(CATEGORIES)]])


if __name__ == "__main__":
    make_manifest(make_images())
    print(f"wrote {ROOT}/manifest.csv and {ROOT}/images/")
