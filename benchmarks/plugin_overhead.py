"""The plug-in's own overhead on a 24-megapixel layer, in headless GIMP.

    sudo python benchmarks/plugin_overhead.py [3.0|3.2]

Runs the plug-in once on a 6000×4000 RGBA layer with one step at 64 px (random
weights), so nearly all the time is the plug-in's and the engine's fixed costs, and
prints when the plug-in saw each kind of engine event (NST_PLUGIN_TIMINGS).
"""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from gimp_env import Gimp  # noqa: E402


def main() -> None:
    gimp = Gimp(sys.argv[1] if len(sys.argv) > 1 else "3.0")
    gimp.setup()
    try:
        style = gimp.scratch / "style.png"
        from PIL import Image

        Image.effect_mandelbrot((256, 256), (-2, -1.2, 1, 1.2), 60).convert("RGB").save(style)
        script = (Path(__file__).resolve().parent.parent / "tests/gimp/scenarios.py").read_text()
        done = gimp.batch(script, {"NST_E2E_STYLE": gimp.inside(style),
                                   "NST_E2E_SCENARIOS": "big", "NST_PLUGIN_TIMINGS": "1"})
        for line in done.stdout.splitlines():
            if re.match(r"(NST-RESULT|nst-timings)", line) or "nst-timings" in line:
                print(line)
    finally:
        gimp.teardown()


if __name__ == "__main__":
    main()
