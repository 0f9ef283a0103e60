"""A series of photos three ways, in one run: a shell loop of ``nst-engine stylize``
(each photo pays torch's start-up, the network's load and the style targets), one
``nst-engine batch``, and ``nst-engine batch --ray`` on a two-node Ray cluster started
here (tests/raycluster.py: its own network namespace, one CPU a node; needs root).
Then the resident memory of one longer ``batch``, after every photo.

    python benchmarks/batches.py PHOTO PAINTING [--photos 20] [--size 256]
                                 [--rss-photos 50] [--rss-iterations 40] [--skip-ray]

The photos are ``--photos`` different crops of PHOTO, ``--size`` pixels on their long
side; every way paints them with the default settings (the working size is then the
photo's). The memory batch paints ``--rss-photos`` crops with ``--rss-iterations``
steps each (what is measured is whether memory grows from photo to photo, not how
long a photo takes). The engine must have the real weights (NST_DATA_DIR), as a
photographer's has. Prints JSON lines: photos per minute for each way, and the RSS
curve.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from raycluster import RayCluster  # noqa: E402

ENGINE = [sys.executable, "-m", "nst_engine"]


def make_photos(photo: Path, folder: Path, count: int, size: int) -> list[Path]:
    """``count`` crops of the photo, each a different square region scaled to ``size``."""
    folder.mkdir(parents=True)
    paths = []
    with Image.open(photo) as image:
        image = image.convert("RGB")
        side = min(image.size) * 2 // 3
        for i in range(count):
            x = (image.width - side) * (i % 5) // 4
            y = (image.height - side) * (i // 5 % 4) // 3
            crop = image.crop((x, y, x + side, y + side)).resize((size, size), Image.LANCZOS)
            path = folder / f"photo{i:03d}.png"
            crop.save(path)
            paths.append(path)
    return paths


def shell_loop(photos: list[Path], painting: Path, out: Path, env: dict) -> float:
    out.mkdir()
    start = time.monotonic()
    for photo in photos:
        subprocess.run([*ENGINE, "stylize", str(photo), str(painting), "-o",
                        str(out / photo.name), "--no-service"], env=env, check=True,
                       capture_output=True)
    return time.monotonic() - start


def one_batch(photos: list[Path], painting: Path, out: Path, env: dict, run=None) -> float:
    argv = [*ENGINE, "batch", str(photos[0].parent), "--style", str(painting), "-o", str(out),
            "--no-service"]
    start = time.monotonic()
    if run is None:
        subprocess.run(argv, env=env, check=True, capture_output=True)
    else:  # on the cluster: the driver inside its namespace
        done = run([*argv[:-1], "--ray", run.address], timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
    return time.monotonic() - start


def rss_curve(photos: list[Path], painting: Path, out: Path, env: dict,
              iterations: int) -> dict:
    """VmRSS after every photo of one batch, and its peak (polled every 0.1 s)."""
    process = subprocess.Popen([*ENGINE, "batch", str(photos[0].parent), "--style",
                                str(painting), "-o", str(out), "--no-service", "--progress",
                                "json", "--iterations", str(iterations)], env=env,
                               stdout=subprocess.PIPE, text=True)
    peak = [0]

    def rss() -> int:
        try:
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def poll() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], rss())
            time.sleep(0.1)

    threading.Thread(target=poll, daemon=True).start()
    after = []
    for line in process.stdout:
        if json.loads(line)["event"] == "photo":
            after.append(round(rss() / 2**20, 1))
    process.wait()
    return {"after_each_photo_mib": after, "peak_mib": round(peak[0] / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("photo", type=Path)
    parser.add_argument("painting", type=Path)
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rss-photos", type=int, default=50)
    parser.add_argument("--rss-iterations", type=int, default=40)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nst-batches-") as scratch:
        scratch = Path(scratch)
        runtime = scratch / "run"  # no warm engine of the user's serves these runs
        runtime.mkdir(mode=0o700)
        env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "PYTHONPATH": str(REPO)}
        photos = make_photos(args.photo, scratch / "photos", args.photos, args.size)
        subprocess.run([*ENGINE, "stylize", str(photos[0]), str(args.painting), "-o",
                        str(scratch / "warm-up.png"), "--iterations", "1"], env=env,
                       check=True, capture_output=True)  # the bf16 probe, the page cache
        seconds = {"shell loop of stylize": shell_loop(photos, args.painting,
                                                       scratch / "loop", env),
                   "batch": one_batch(photos, args.painting, scratch / "batch", env)}
        if not args.skip_ray:
            cluster = RayCluster(env)
            try:
                seconds["batch --ray (2 nodes, 1 CPU each)"] = one_batch(
                    photos, args.painting, scratch / "ray", env, run=_on(cluster))
            finally:
                cluster.close()
        for way, spent in seconds.items():
            print(json.dumps({"way": way, "photos": len(photos), "size": args.size,
                              "seconds": round(spent, 1),
                              "photos_per_minute": round(60 * len(photos) / spent, 2)}),
                  flush=True)
        many = make_photos(args.photo, scratch / "many", args.rss_photos, args.size)
        print(json.dumps({"rss": rss_curve(many, args.painting, scratch / "rss", env,
                                           args.rss_iterations),
                          "photos": len(many), "size": args.size,
                          "iterations": args.rss_iterations}), flush=True)


def _on(cluster: RayCluster):
    def run(argv, **kwargs):
        return cluster.run(argv, **kwargs)

    run.address = cluster.address
    return run


if __name__ == "__main__":
    main()
