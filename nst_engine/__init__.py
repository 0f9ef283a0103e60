"""Neural style transfer (Gatys et al., VGG19) for GIMP and the command line.

The public names are imported lazily, so that ``python -m nst_engine`` can set up
its signal handling before torch is imported.
"""

from importlib import import_module

__version__ = "0.3.0"
_PUBLIC = {
    "EngineError": "nst_contract.errors", "Settings": "nst_contract.knobs",
    "Picture": "nst_engine.pictures", "load_picture": "nst_engine.images",
    "save_picture": "nst_engine.images", "Control": "nst_engine.control",
    "Iterate": "nst_engine.loop", "Result": "nst_engine.transfer",
    "StyleTransfer": "nst_engine.transfer",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'nst_engine' has no attribute {name!r}")
    return getattr(import_module(_PUBLIC[name]), name)
