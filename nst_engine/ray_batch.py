"""``nst-engine batch --ray ADDRESS``: the batch's plan painted on a Ray cluster.

Ray's pattern for a model on many machines: one long-lived actor (a
:class:`Painter`) per GPU — or, on a cluster without GPUs, one per machine with all
its CPUs — keeps the network and the style targets loaded and is handed photos one
at a time. Photos and results travel as file bytes through Ray, so no shared
filesystem is assumed, and only this driver writes results: each atomically, and
each photo once, however often Ray lost a painter on the way. A painter that dies
mid-photo (its process, or its whole machine) costs that photo only: it is painted
again by another painter, ``ATTEMPTS`` times at most, and a replacement is started
where the cluster still has room. Ctrl-C ends this batch's painters; results
already written stay.

This module never starts a Ray cluster: it connects to one its user runs (README,
*Batches*). Ray is an optional extra: ``pip install 'nst-engine[ray]'``.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

from nst_contract.errors import EngineError, bad_input
from nst_contract.knobs import Settings

from . import __version__
from .batch_plan import Outcome, Photo, Plan, failure
from .control import Control
from .files import atomic_path

ATTEMPTS = 3  # tries of one photo when the painters painting it die
NO_PAINTER_WAIT_S = 120.0  # with every painter lost, how long a replacement may take
REPLACEMENTS_PER_PAINTER = 2  # painters started for lost ones, at most, in one batch
POLL_S = 0.25  # how often the driver looks at Ctrl-C while it waits for Ray

Emit = Callable[[dict], None]


def _picture_from_bytes(name: str, body: bytes, what: str):
    """A picture from a file's bytes, read through the same code as a file on disk."""
    from .images import load_picture

    with tempfile.TemporaryDirectory(prefix="nst-ray-") as folder:
        path = Path(folder) / Path(name).name
        path.write_bytes(body)
        return load_picture(path, what)


class Painter:
    """A Ray actor: the network and the style targets, loaded once, and photos painted
    one at a time. Failures come back as values (``error``, ``message``), so the
    driver tells a photo that cannot be painted from a painter that died."""

    def __init__(self, settings: dict, styles: list[tuple[str, bytes]]) -> None:
        self.problem = None
        try:
            from .cache import EngineCache
            from .transfer import StyleTransfer

            self.settings = Settings.from_dict(settings)
            self.styles = [_picture_from_bytes(name, body, "style image")
                           for name, body in styles]
            self.cache = EngineCache()
            StyleTransfer(self.settings, self.cache)  # loads the network now, not mid-photo
        except EngineError as error:
            self.problem = {"error": error.kind, "message": error.message}

    def hello(self) -> dict:
        import ray

        context = ray.get_runtime_context()
        return {"version": __version__, "node": context.get_node_id(), "pid": os.getpid(),
                "ppid": os.getppid(), **(self.problem or {})}

    def paint(self, name: str, body: bytes, suffix: str) -> dict:
        """The result's file bytes (in the format ``suffix`` names)."""
        from .images import save_picture
        from .jobs import Job, file_deliverer, run_job

        started = time.monotonic()
        try:
            content = _picture_from_bytes(name, body, "photo")
            with tempfile.TemporaryDirectory(prefix="nst-ray-") as folder:
                output = Path(folder) / ("result" + suffix)
                job = Job(content, self.styles, self.settings,
                          file_deliverer(output, save_picture))
                result = run_job(job, lambda event: None, Control(), self.cache)
                return {"bytes": output.read_bytes(), "steps": result["steps"],
                        "seconds": time.monotonic() - started, "pid": os.getpid()}
        except Exception as exc:  # the photo's failure, not the painter's
            return {"error": getattr(exc, "kind", "internal"), "message": failure(exc)}
        finally:
            self.cache.release_memory()


def connect(address: str):
    """Joins the cluster at ``address`` (``auto``: $RAY_ADDRESS) as a client; never
    starts one."""
    try:
        import ray
    except ImportError:
        raise bad_input("--ray needs Ray on this machine: pip install 'nst-engine[ray]' "
                        "(or ./install.sh --with-ray)") from None
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as exc:  # ConnectionError, AuthenticationError, a bad address …
        raise bad_input(
            f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0]}. Is it "
            "running, and does this machine have its token (RAY_AUTH_MODE=token and "
            "RAY_AUTH_TOKEN, or ~/.ray/auth_token)?") from None
    return ray


def paint_on_ray(plan: Plan, settings: Settings, style_paths: list[Path], address: str,
                 emit: Emit, control: Control) -> Iterator[Outcome]:
    """Paints ``plan.todo`` on the cluster, yielding each photo's outcome as it comes."""
    # Ray prints its cluster's news (a node lost, …) to sys.stdout, where --progress
    # json's events go (written to the stream itself, not through sys.stdout): to stderr.
    stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        ray = connect(address)
        try:
            yield from _Pool(ray, settings, style_paths).paint(plan, emit, control)
        finally:
            ray.shutdown()  # this driver's painters end with it
    finally:
        sys.stdout = stdout


class _Pool:
    """The painters and the photos in their hands."""

    def __init__(self, ray, settings: Settings, style_paths: list[Path]) -> None:
        self.ray = ray
        values = {key: value for key, value in asdict(settings).items() if value is not None}
        styles = [(path.name, path.read_bytes()) for path in style_paths]
        self.actor = ray.remote(max_restarts=0, max_task_retries=0)(Painter)
        self.arguments = (values, styles)
        self.starting: dict = {}  # hello() ref -> (painter, node id or None)
        self.idle: list = []
        self.busy: dict = {}  # paint() ref -> (painter, node, photo, digest, attempt, start)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus:
            for _ in range(gpus):
                self._start(None)
        else:
            for node in self._alive_nodes():
                self._start(node)
        self.replacements_left = REPLACEMENTS_PER_PAINTER * len(self.starting)
        if not self.starting:
            raise bad_input("the Ray cluster has no GPU and no node with CPUs to paint on")

    def _alive_nodes(self) -> list[dict]:
        return [node for node in self.ray.nodes()
                if node["Alive"] and node["Resources"].get("CPU", 0) >= 1]

    def _start(self, node: dict | None) -> None:
        if node is None:  # a GPU anywhere; one CPU to feed it
            options = {"num_gpus": 1, "num_cpus": 1}
        else:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options = {"num_cpus": int(node["Resources"]["CPU"]),
                       "scheduling_strategy": NodeAffinitySchedulingStrategy(
                           node["NodeID"], soft=False)}
        painter = self.actor.options(**options).remote(*self.arguments)
        self.starting[painter.hello.remote()] = (painter, node and node["NodeID"])

    def _replace(self, node_id: str | None) -> None:
        """Another painter for one that died: a GPU's anywhere, a machine's on the same
        machine while it is alive."""
        if self.replacements_left <= 0:
            return
        if node_id is None:
            self.replacements_left -= 1
            self._start(None)
            return
        for node in self._alive_nodes():
            if node["NodeID"] == node_id:
                self.replacements_left -= 1
                self._start(node)

    def paint(self, plan: Plan, emit: Emit, control: Control) -> Iterator[Outcome]:
        ray = self.ray
        from ray.exceptions import RayError

        queue: deque[tuple[Photo, str, int]] = deque((p, d, 1) for p, d in plan.todo)
        alone_since = None
        try:
            while queue or self.busy:
                control.check()
                while self.idle and queue:
                    photo, digest, attempt = queue.popleft()
                    try:
                        body = photo.source.read_bytes()
                    except OSError as exc:
                        yield Outcome(photo, "failed", f"cannot read it: {exc.strerror}")
                        continue
                    painter, node = self.idle.pop()
                    ref = painter.paint.remote(photo.source.name, body, photo.output.suffix)
                    self.busy[ref] = (painter, node, photo, digest, attempt, time.monotonic())
                if not self.busy and not self.idle:  # every painter lost
                    alone_since = alone_since or time.monotonic()
                    if (not self.starting
                            or time.monotonic() - alone_since > NO_PAINTER_WAIT_S):
                        while queue:
                            yield Outcome(queue.popleft()[0], "failed",
                                          "no Ray painter left to paint it")
                        return
                else:
                    alone_since = None
                ready, _ = ray.wait([*self.busy, *self.starting], num_returns=1,
                                    timeout=POLL_S)
                for ref in ready:
                    if ref in self.starting:
                        self._started(ref)
                        continue
                    painter, node, photo, digest, attempt, start = self.busy.pop(ref)
                    try:
                        answer = ray.get(ref)
                    except RayError as exc:
                        # The painter died (its process or its machine): the photo is
                        # not at fault; it goes back to the front of the queue.
                        self._replace(node)
                        reason = f"its Ray painter was lost ({type(exc).__name__})"
                        if attempt >= ATTEMPTS:
                            yield Outcome(photo, "failed", f"{reason}, {attempt} times",
                                          time.monotonic() - start, attempt)
                        else:
                            emit({"event": "retry", "photo": photo.index,
                                  "attempt": attempt + 1, "reason": reason})
                            queue.appendleft((photo, digest, attempt + 1))
                        continue
                    self.idle.append((painter, node))
                    if "error" in answer:
                        yield Outcome(photo, "failed", answer["message"],
                                      time.monotonic() - start, attempt)
                        continue
                    try:
                        with atomic_path(photo.output) as tmp:
                            Path(tmp).write_bytes(answer["bytes"])
                    except OSError as exc:
                        yield Outcome(photo, "failed", f"cannot write {photo.output}: "
                                      f"{exc.strerror or exc}", time.monotonic() - start,
                                      attempt)
                        continue
                    plan.manifest.record(photo, digest)
                    yield Outcome(photo, "done", seconds=time.monotonic() - start,
                                  attempts=attempt)
        finally:
            for painter, *_ in [*self.busy.values(), *self.starting.values(), *self.idle]:
                ray.kill(painter)

    def _started(self, ref) -> None:
        from ray.exceptions import RayError

        painter, node = self.starting.pop(ref)
        try:
            hello = self.ray.get(ref)
        except RayError:  # its machine went away before it started
            return
        if hello["version"] != __version__:
            raise bad_input(f"a Ray node runs nst-engine {hello['version']} and this machine "
                            f"{__version__}: install the same version on every node")
        if "error" in hello:
            raise EngineError(hello["error"], f"a Ray painter could not start: "
                              f"{hello['message']}")
        self.idle.append((painter, node))
