"""Real photos for the sharpness benchmark, from Debian's desktop-background packages.

    python benchmarks/photos.py FOLDER

Writes ``garden.jpg`` (2560×1600, 4.1 MP, as packaged) and ``collage-24mp.png``
(6000×4000: nine 2000×1333 crops of nine 4.1 MP photos at their own resolution,
so every pixel is real photographic detail; no package has a 24 MP photo).
Sources, all GPL-2+ (the packages' ``debian/copyright``): mate-backgrounds 1.26
``nature/`` — Garden, LadyBird, YellowFlower, Aqua, TwoWings (© 2008 Charles
Barbin, TwoWings also Hylke Bons), Wood; plasma-workspace-wallpapers 5.27 —
Path, BytheWater, ColorfulCups (© KDE Visual Design Group). Needs ``apt-get``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

MATE = "usr/share/backgrounds/mate/nature/{}.jpg"
PLASMA = "usr/share/wallpapers/{}/contents/images/2560x1600.jpg"
PHOTOS = [("mate-backgrounds", MATE.format(name)) for name in (
    "Garden", "LadyBird", "YellowFlower", "Aqua", "TwoWings", "Wood")] + [
    ("plasma-workspace-wallpapers", PLASMA.format(name)) for name in (
        "Path", "BytheWater", "ColorfulCups")]


def unpack(packages: set[str], into: Path) -> None:
    subprocess.run(["apt-get", "download", *sorted(packages)], cwd=into, check=True)
    for deb in into.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True)


def main() -> None:
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        unpack({package for package, _ in PHOTOS}, root)
        photos = [Image.open(root / path).convert("RGB") for _, path in PHOTOS]
        shutil.copyfile(root / PHOTOS[0][1], folder / "garden.jpg")
        collage = Image.new("RGB", (6000, 4000))
        for index, photo in enumerate(photos):
            left = (photo.width - 2000) // 2
            top = (photo.height - 1333) // 2
            crop = photo.crop((left, top, left + 2000, top + 1334 if index // 3 == 2 else
                               top + 1333))
            collage.paste(crop, (index % 3 * 2000, index // 3 * 1333))
        collage.save(folder / "collage-24mp.png")
    print(f"wrote {folder / 'garden.jpg'} and {folder / 'collage-24mp.png'}")


if __name__ == "__main__":
    main()
