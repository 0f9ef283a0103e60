"""What a long-lived engine (the service) keeps between runs: the loaded network and the
style targets of recently used paintings."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

from . import devices

GRAMS_KEPT = 32  # paintings × sizes


def style_digest(rgb) -> str:
    """A painting's pixels, as its part of :func:`style_key` (worked out once a run)."""
    return hashlib.sha1(rgb.tobytes()).hexdigest()


def style_key(digest: str, size: tuple[int, int], network_key: tuple, style_loss: str) -> tuple:
    """The one key of a painting's style targets: its pixels, the size they were resized
    to, the network that saw them, and the style loss they are for (Grams, or Grams
    and means)."""
    return digest, size, network_key, style_loss


class EngineCache:
    """One network at a time (memory over reuse) and the last ``GRAMS_KEPT`` style
    targets, least recently used first out."""

    def __init__(self) -> None:
        self.networks: dict[tuple, tuple] = {}
        self.grams: OrderedDict[tuple, dict] = OrderedDict()

    def network(self, key: tuple, load: Callable[[], tuple]) -> tuple:
        if key not in self.networks:
            self.networks.clear()
            self.networks[key] = load()
        return self.networks[key]

    def release_memory(self) -> None:
        """Gives the device's cached memory back between runs (the network stays)."""
        for network, _ in self.networks.values():
            devices.release_memory(next(network.parameters()).device)

    def gram(self, key: tuple, compute: Callable[[], dict]) -> dict:
        if key in self.grams:
            self.grams.move_to_end(key)
            return self.grams[key]
        value = self.grams[key] = compute()
        while len(self.grams) > GRAMS_KEPT:
            self.grams.popitem(last=False)
        return value
