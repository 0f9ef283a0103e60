"""A client of the warm engine service: what ``nst-engine stylize`` does when one runs.

No torch here: the command line sends the photo and the style files, shows the
events and writes the result, and the service does the painting.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from nst_contract.errors import EngineError
from nst_contract.wire import PREVIEW_SLACK, PROTOCOL, SILENT_ENGINE_S, Channel, encode

from .control import Control
from .pictures import Picture
from .relay import Reached


def request_over(service: Reached, settings: dict, picture: Picture, styles: list[Path],
                 on_event: Callable[[dict], None], control: Control) -> tuple[dict, Picture]:
    """A client of the service (``nst-engine stylize``): sends the picture's colour as
    float32 and the style files, passes the events on, and returns the ``result``
    event and the stylised picture (alpha, bit depth and profile are the input's).
    A service silent for SILENT_ENGINE_S has stopped answering: an error."""
    sock = service.sock
    sock.settimeout(SILENT_ENGINE_S)
    color = picture.rgb[..., :1] if picture.gray else picture.rgb
    data = np.ascontiguousarray(color, dtype="<f4")
    run = {"type": "run", "protocol": PROTOCOL, "settings": settings, "styles": len(styles),
           "content": {"shape": list(data.shape), "dtype": "<f4"}, "bytes": data.nbytes}
    stop = threading.Event()

    def forward_cancel() -> None:  # Ctrl-C here cancels the run there
        while not stop.wait(0.2):
            if control.cancel.is_set():
                try:
                    sock.sendall(encode({"type": "cancel"}))
                except OSError:
                    pass
                return

    channel = Channel(sock.recv, sock.recv_into, key="event")
    channel.frames.feed(service.after)  # what came with the greeting

    def limit(event: dict) -> int:  # the result is the picture sent; a preview smaller
        return data.nbytes + (0 if event["event"] == "result" else PREVIEW_SLACK)

    try:
        sock.sendall(encode(run) + data.tobytes())
        for path in styles:
            body = Path(path).read_bytes()
            sock.sendall(encode({"type": "style", "name": Path(path).name,
                                 "bytes": len(body)}) + body)
        threading.Thread(target=forward_cancel, daemon=True).start()
        while True:
            try:
                event, payload = channel.read(limit)
            except EOFError:
                raise EngineError("internal", "the engine service closed the connection "
                                  "without a result") from None
            if event["event"] == "error":
                raise EngineError(event.get("kind", "internal"), event.get("message", ""))
            if event["event"] == "result":
                shape = event["shape"]
                rgb = np.frombuffer(payload, "<f4").reshape(shape).astype(np.float32)
                if picture.gray:
                    rgb = np.repeat(rgb, 3, axis=2)
                return event, replace(picture, rgb=rgb)
            if event["event"] != "alive":  # the engine's heartbeat: nothing to show
                on_event(event)
    except TimeoutError:
        raise EngineError("internal", f"the engine service (pid {service.pid}) stopped "
                          f"answering: nothing for {SILENT_ENGINE_S:.0f} s; the next run "
                          "starts a fresh one") from None
    finally:
        stop.set()
