"""Sharp at 100 %: the enlargement to full size and the refinement there."""

import numpy as np
import pytest
import torch
from conftest import real_weights_dir
from test_tiling import assert_no_seams, structured_photo

from nst_contract.plan import BYTES_PER_PIXEL
from nst_engine import EngineError, Settings, StyleTransfer, enlarging, load_picture
from nst_engine.control import Control
from nst_engine.enlarging import enlarge, resize
from nst_engine.pictures import Picture
from nst_engine.tensors import to_tensor

CPU = torch.device("cpu")


def finest_octave_energy(image: torch.Tensor) -> float:
    """Mean squared luminance of the finest octave (the image minus itself at half size)."""
    y = enlarging.luma_plane(image)
    height, width = y.shape[-2:]
    return float(((y - resize(resize(y, width // 2, height // 2), width, height)) ** 2).mean())


def small(**overrides) -> Settings:
    values = {"max_size": 48, "iterations": 6, "device": "cpu", "seed": 2, "detail": "full",
              "detail_steps": 3}
    return Settings(**{**values, **overrides})


def test_refinement_is_planned_after_the_working_size_and_only_below_full_size():
    engine = StyleTransfer(small())
    plan = engine.plan(200, 150)
    assert [(s.width, s.height, s.refining) for s in plan[-2:]] == [(48, 36, False),
                                                                  (200, 150, True)]
    assert plan[-1].steps == 3
    assert not any(s.refining for s in engine.plan(40, 30))  # already worked at full size
    assert not any(s.refining for s in StyleTransfer(small(detail="working")).plan(200, 150))


def test_automatic_detail_refines_on_a_gpu_only():
    automatic = Settings()
    assert automatic.refines("cuda") and automatic.refines("mps")
    assert not automatic.refines("cpu")
    assert Settings(detail="full").refines("cpu")
    assert not Settings(detail="working").refines("cuda")
    assert automatic.refinement_steps("cpu") < automatic.refinement_steps("cuda")
    assert Settings(detail_steps=7).refinement_steps("cuda") == 7


def test_refinement_keeps_size_alpha_and_changes_the_enlarged_picture(photo, painting):
    rgb = load_picture(photo).rgb
    alpha = np.linspace(0.1, 1.0, rgb.shape[0] * rgb.shape[1], dtype=np.float32)
    content = Picture(rgb, alpha=alpha.reshape(rgb.shape[:2]), bits=16)
    style = [load_picture(painting)]
    steps = []
    refined = StyleTransfer(small()).stylize(content, style, steps.append)
    enlarged = StyleTransfer(small(detail="working")).stylize(content, style)
    assert refined.picture.rgb.shape == rgb.shape and refined.picture.bits == 16
    assert np.array_equal(refined.picture.alpha, content.alpha)
    assert [it.refining for it in steps].count(True) == 3
    assert steps[-1].width == 96 and steps[-1].step == steps[-1].total
    losses = [it.loss for it in steps if it.refining]
    assert losses[-1] < losses[0]  # it optimised the enlarged picture further ...
    assert not np.array_equal(refined.picture.rgb, enlarged.picture.rgb)  # ... and kept it
    assert refined.steps == enlarged.steps + 3


def test_keep_during_the_refinement_keeps_the_enlarged_picture(painting):
    """Keep this result keeps the last finished state: not a half-refined picture."""
    from nst_engine import devices

    content, style = Picture(structured_photo(300, 220).rgb), [load_picture(painting)]
    work = 170 * 170 * BYTES_PER_PIXEL  # 170-pixel tiles at most
    budget = {"memory_budget": (devices.fixed_bytes(CPU) + 64 * 300 * 220 + work) / 1e9}
    engine = StyleTransfer(small(**budget))
    refinement = engine.plan(300, 220)[-1]
    assert refinement.refining and len(refinement.tiles) > 1
    control = Control()

    def keep_in_the_refinement(it):
        if it.refining:
            control.finish.set()

    kept = engine.stylize(content, style, keep_in_the_refinement, control)
    enlarged = StyleTransfer(small(detail="working", **budget)).stylize(content, style)
    assert kept.stopped == "finished"
    assert np.array_equal(kept.picture.rgb, enlarged.picture.rgb)


def test_cancel_during_the_refinement_is_cancelled(photo, painting):
    control = Control()

    def cancel_in_the_refinement(it):
        if it.refining:
            control.cancel.set()

    with pytest.raises(EngineError) as info:
        StyleTransfer(small()).stylize(load_picture(photo), [load_picture(painting)],
                                       cancel_in_the_refinement, control)
    assert info.value.kind == "cancelled"


def test_refinement_style_targets_are_not_blurrier_than_the_painting(painting, monkeypatch):
    """At full size the painting is measured at most at its own size: enlarged to the
    photo's, its texture would be blurred (finest-octave energy far below its own)."""
    style = to_tensor(load_picture(painting).rgb, CPU)  # 64×64
    engine = StyleTransfer(small())
    measured = []
    original = engine.targets.grams
    monkeypatch.setattr(engine.targets, "grams", lambda image, *args: (
        measured.append(image), original(image, *args))[1])
    engine.targets.style_grams([style], 1000, 1e9, native=True)
    engine.targets.style_grams([style], 1000, 1e9)  # a working scale of that size would enlarge it
    native, enlarged = (finest_octave_energy(image) for image in measured)
    own = finest_octave_energy(style)
    assert native >= 0.95 * own
    assert enlarged < 0.3 * own  # the measure tells blur apart


def test_refinement_in_tiles_stays_in_budget_and_leaves_no_seams(painting, monkeypatch):
    monkeypatch.setenv("NST_DATA_DIR", str(real_weights_dir()))
    monkeypatch.delenv("NST_WEIGHTS")
    photo, style = structured_photo(), load_picture(painting)
    engine = StyleTransfer(Settings(max_size=128, iterations=20, device="cpu", seed=3,
                                    detail="full", detail_steps=8, memory_budget=1.25))
    refinement = engine.plan(512, 384)[-1]
    assert refinement.refining and len(refinement.tiles) >= 4
    budget = engine.work_budget(512 * 384)
    assert all((x1 - x0) * (y1 - y0) * BYTES_PER_PIXEL <= budget
               for x0, y0, x1, y1 in refinement.tiles)

    refined = engine.stylize(photo, [style]).picture

    assert_no_seams(refined.rgb, refinement.tiles)


def photo_with_detail(width=240, height=180) -> torch.Tensor:
    """Fine stripes and a hard-edged disc: detail a ×4 shrink blurs."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([0.5 + 0.3 * np.sin(x / 5), 0.5 + 0.3 * np.cos(y / 5),
                    np.full_like(x, 0.4)], axis=2)
    rgb[(x - 120) ** 2 + (y - 90) ** 2 < 50**2] = (0.9, 0.8, 0.1)
    return to_tensor(rgb, CPU)


def test_guided_enlargement_brings_back_the_photo_s_detail_where_the_painting_follows_it():
    photo = photo_with_detail()
    follows = resize(photo, 60, 45)  # a "painting" that kept the photo as it was
    bicubic = enlarge(follows, photo, "bicubic")
    guided = enlarge(follows, photo, "guided")
    error = {name: float((image - photo).abs().mean())
             for name, image in (("bicubic", bicubic), ("guided", guided))}
    assert error["guided"] < 0.6 * error["bicubic"], error
    energy = {name: finest_octave_energy(image) for name, image in (
        ("photo", photo), ("bicubic", bicubic), ("guided", guided))}
    assert energy["bicubic"] < 0.1 * energy["photo"] < 0.2 * energy["guided"], energy


def test_guided_enlargement_adds_nothing_where_the_painting_ignores_the_photo():
    photo = photo_with_detail()
    flat = torch.full((1, 3, 45, 60), 0.3)
    flat[..., :, 30:] = 0.7  # an edge of its own, unrelated to the photo
    added = (enlarge(flat, photo, "guided") - enlarge(flat, photo, "bicubic")).abs()
    assert added.mean() < 1e-3 and added.max() < 0.05  # the photo's stripes: ±0.3


def test_guided_enlargement_in_strips_equals_the_whole(monkeypatch):
    photo = photo_with_detail()
    painting = resize(photo, 60, 45) ** 2
    whole = enlarge(painting, photo, "guided")
    monkeypatch.setattr(enlarging, "STRIP_ROWS", 7)
    assert torch.allclose(enlarge(painting, photo, "guided"), whole, atol=1e-6)


def test_enlargement_at_full_size_is_the_picture_itself():
    photo = photo_with_detail()
    assert enlarge(photo, photo, "guided") is photo


def test_refinement_out_of_memory_says_what_to_change(photo, painting, monkeypatch):
    from nst_engine.loop import Loop

    original = Loop.optimise

    def no_memory(self, start, objective, scale, tile, photo=None):
        if scale.refining:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried...")
        return original(self, start, objective, scale, tile, photo)

    monkeypatch.setattr(Loop, "optimise", no_memory)
    with pytest.raises(EngineError) as info:
        StyleTransfer(small()).stylize(load_picture(photo), [load_picture(painting)])
    assert info.value.kind == "out_of_memory" and "--detail working" in info.value.message
