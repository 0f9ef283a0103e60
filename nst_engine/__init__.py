"""Neural style transfer (Gatys et al., VGG19) for GIMP and the command line.

The public names are imported lazily, so that ``python -m nst_engine`` can set up
its signal handling before torch is imported.
"""

from importlib import import_module

__version__ = "0.2.0"
_PUBLIC = {
    "EngineError": "errors", "Picture": "images", "load_picture": "images",
    "save_picture": "images", "Settings": "settings", "Control": "control",
    "Iterate": "transfer", "Result": "transfer", "StyleTransfer": "transfer",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'nst_engine' has no attribute {name!r}")
    return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
