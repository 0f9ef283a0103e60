import collections
import os

import numpy as np
import pytest
import torch

from nst_contract.knobs import style_weight_for
from nst_contract.plan import lbfgs_history, plan_scales
from nst_engine import Control, EngineError, Settings, StyleTransfer, load_picture
from nst_engine.losses import gram_matrix
from nst_engine.pictures import Picture, luminance
from nst_engine.tensors import to_tensor


def small(**values) -> Settings:
    return Settings.from_dict({"max_size": 64, "iterations": 20, "device": "cpu", **values})


def test_objective_falls_by_half_within_20_steps(photo, painting):
    engine = StyleTransfer(small())
    losses = []
    engine.stylize(load_picture(photo), [load_picture(painting)], lambda p: losses.append(p.loss))
    assert len(losses) == 20
    assert losses[-1] <= 0.5 * losses[0]


def test_output_grams_move_towards_the_style(photo, painting):
    engine = StyleTransfer(small(iterations=30))
    content, style = load_picture(photo), load_picture(painting)
    result = engine.stylize(content, [style]).picture

    def grams(picture):
        feats = engine.network.features(to_tensor(picture.rgb, engine.device))
        return {k: gram_matrix(feats[k]) for k in engine.settings.style_layers}

    target, before, after = grams(style), grams(content), grams(result)
    for layer in ("relu1_1", "relu2_1"):
        assert (after[layer] - target[layer]).norm() < 0.8 * (before[layer] - target[layer]).norm()


def test_result_has_full_size_and_alpha_bit_exact(photo, painting):
    content = load_picture(photo)
    rng = np.random.default_rng(0)
    content.alpha = rng.random(content.rgb.shape[:2], dtype=np.float32)
    result = StyleTransfer(small(max_size=48, iterations=3)).stylize(
        content, [load_picture(painting)]).picture
    assert result.rgb.shape == content.rgb.shape and result.rgb.dtype == np.float32
    assert result.alpha.tobytes() == content.alpha.tobytes()


def test_same_seed_same_result_on_cpu(photo, painting):
    def run():
        settings = small(iterations=4, init="noise", seed=7)
        result = StyleTransfer(settings).stylize(load_picture(photo), [load_picture(painting)])
        return result.picture.rgb

    assert np.array_equal(run(), run())


def test_preserve_colors_keeps_the_content_chroma(photo, painting):
    content = load_picture(photo)
    result = StyleTransfer(small(iterations=5, preserve_colors=True)).stylize(
        content, [load_picture(painting)]).picture

    def chroma(rgb):
        return rgb - luminance(rgb)[..., None]

    inside = (result.rgb > 0.02).all(axis=2) & (result.rgb < 0.98).all(axis=2)
    assert inside.mean() > 0.5
    assert np.abs(chroma(result.rgb) - chroma(content.rgb))[inside].max() < 1e-5
    assert np.abs(result.rgb - content.rgb).mean() > 1e-3  # but the luminance changed


def test_grayscale_comes_back_grayscale(photo, painting):
    gray = Picture(np.repeat(load_picture(photo).rgb[..., :1], 3, axis=2), gray=True)
    result = StyleTransfer(small(iterations=2)).stylize(gray, [load_picture(painting)]).picture
    assert result.gray
    assert np.array_equal(result.rgb[..., 0], result.rgb[..., 1])


def test_style_blend_weights_choose_the_styles(photo, painting):
    content, first, second = load_picture(photo), load_picture(painting), load_picture(photo)

    def run(styles, blend=None):
        return StyleTransfer(small(iterations=3, style_blend=blend)).stylize(
            content, styles).picture.rgb

    only_first, only_second = run([first]), run([second])
    assert np.array_equal(run([first, second], [1, 0]), only_first)
    assert np.array_equal(run([first, second], [0, 1]), only_second)
    mixed = run([first, second], [1, 1])
    assert not np.array_equal(mixed, only_first) and not np.array_equal(mixed, only_second)
    with pytest.raises(EngineError, match="blend weights"):
        StyleTransfer(small(style_blend=[2, 1])).stylize(content, [first])


def test_cancel_stops_within_a_step(photo, painting):
    control = Control()
    steps = []

    def on_step(progress):
        steps.append(progress.step)
        control.cancel.set()

    with pytest.raises(EngineError) as info:
        StyleTransfer(small()).stylize(
            load_picture(photo), [load_picture(painting)], on_step, control)
    assert info.value.kind == "cancelled" and steps == [1]


def test_a_cancel_during_the_style_grams_ends_the_run_between_two_strips(
        photo, painting, monkeypatch):
    """What ``test_failures.py`` (3.) times from outside the engine, seen from inside:
    the painting enlarged 40× goes through the network in strips; a cancel asked
    during the first strip ends the run before the next strip, and before any step."""
    import traceback

    from nst_engine.network import Network

    control = Control()
    strips = []
    features = Network.features

    def first_strip_cancels(self, image):
        if image.shape[-1] > 1000:  # the enlarged painting (the photo is 64 px wide)
            strips.append(image.shape[-2])
            control.cancel.set()
        return features(self, image)

    monkeypatch.setattr(Network, "features", first_strip_cancels)
    steps = []
    painting_picture = load_picture(painting)
    with pytest.raises(EngineError) as info:
        StyleTransfer(small(style_scale=40.0, memory_budget=1.5)).stylize(
            load_picture(photo), [painting_picture], steps.append, control)
    assert info.value.kind == "cancelled" and steps == []
    assert len(strips) == 1 and strips[0] < 40 * 64  # one strip of several, then no more
    assert "grams" in [frame.name for frame in traceback.extract_tb(info.tb)]


def test_finish_keeps_the_image_after_the_current_step(photo, painting):
    control = Control()
    seen = []

    def on_step(progress):
        seen.append((progress.step, progress.scale_done))
        if progress.step == 7:
            control.finish.set()

    content = load_picture(photo)
    result = StyleTransfer(small()).stylize(content, [load_picture(painting)], on_step, control)
    assert result.steps == 7 and result.stopped == "finished"
    assert [step for step, _ in seen] == list(range(1, 8))
    assert result.picture.rgb.shape == content.rgb.shape


def test_nan_loss_is_reported(photo, painting, monkeypatch):
    engine = StyleTransfer(small(iterations=3, optimizer="adam"))
    original = engine.network.features
    monkeypatch.setattr(engine.network, "features",
                        lambda image, tap=None: original(image * float("nan"), tap))
    with pytest.raises(EngineError, match="diverged"):
        engine.stylize(load_picture(photo), [load_picture(painting)])


def test_plan_scales_coarse_to_fine():
    scales = plan_scales(1080, 720, 512, 200)
    assert [s.width for s in scales] == [128, 256, 512]
    assert [s.height for s in scales] == [85, 171, 341]
    assert [s.steps for s in scales] == [29, 57, 114]  # halving towards the coarsest
    assert [s.steps for s in plan_scales(1080, 720, 512, 10)] == [2, 3, 5]
    # max size above the photo: full resolution
    assert plan_scales(300, 200, 4096, 10)[-1].width == 300
    # a long thin strip keeps a workable short side, never past the top scale
    strip = plan_scales(2000, 200, 512, 10)
    assert strip[0].height >= 32 and max(s.width for s in strip) == 512
    with pytest.raises(EngineError, match="too thin for a max size of 64.*at least 2000"):
        plan_scales(1000, 16, 64, 10)  # was worked at 2000×32, ignoring max size
    with pytest.raises(EngineError, match="at least 10000"):
        plan_scales(5000, 16, 5000, 10)


@pytest.mark.parametrize("iterations", [1, 2, 5, 7, 8, 9, 10, 100, 301, 5000])
@pytest.mark.parametrize("size", [100, 512, 1024, 6000, 30000])
def test_plan_scales_runs_every_scale_and_all_iterations(size, iterations):
    steps = [s.steps for s in plan_scales(size, size, size, iterations)]
    assert sum(steps) == iterations and min(steps) >= 1
    assert steps == sorted(steps)  # never more steps at a coarser scale


def test_lbfgs_history_is_bounded_in_memory():
    assert lbfgs_history(3 * 512 * 512) == 50  # full history up to 512 px
    assert lbfgs_history(3 * 1024 * 1024) == 12  # 12 pairs × 2 × 12.6 MB ≈ 0.3 GB
    assert lbfgs_history(3 * 6000 * 4000) == 5


def test_style_strength_mapping_and_validation():
    assert style_weight_for(0.5) == pytest.approx(10.0)
    assert style_weight_for(0) < style_weight_for(1)
    for bad in ({"style_strength": 1.5}, {"iterations": 0}, {"optimizer": "sgd"},
                {"content_layer": "relu9_1"}, {"iterations": "many"}, {"colour": 1}):
        with pytest.raises(EngineError) as info:
            Settings.from_dict(bad)
        assert info.value.kind == "bad_input"


def test_missing_weights_is_a_distinct_error(monkeypatch):
    monkeypatch.setenv("NST_WEIGHTS", "original")
    with pytest.raises(EngineError) as info:
        StyleTransfer(small())
    assert info.value.kind == "no_weights" and "weights download" in info.value.message


def test_cuda_requested_without_gpu_is_clear():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(EngineError, match="CUDA"):
        StyleTransfer(small(device="cuda"))


@pytest.mark.parametrize("values, words", [
    ({"style_layers": []}, "at least one style layer"),
    ({"init": "contnet"}, "init must be content, noise or an existing image file"),
    ({"style_blend": [1, -1]}, "style blend weight must be at least 0"),
    ({"style_blend": [0, 0]}, "must not all be zero"),
    ({"style_scale": float("nan")}, "style_scale must be a finite number"),
    ({"content_weight": float("inf")}, "content_weight must be a finite number"),
    ({"memory_budget": float("inf")}, "memory_budget must be a finite number"),
    ({"seed": 10**20}, "seed must be at most"),
    ({"iterations": 10**12}, "iterations must be at most 5000"),
    ({"max_size": 16}, "max size must be 0 (automatic) or at least 32"),
    ({"device": "tpu"}, "device must be one of auto, cuda, mps, cpu"),
])
def test_settings_refuse_bad_values_by_name(values, words):
    with pytest.raises(EngineError) as info:
        Settings.from_dict(values)
    assert info.value.kind == "bad_input" and words in info.value.message


def test_automatic_max_size_by_device(photo, painting):
    engine = StyleTransfer(small(max_size=0))
    assert engine.settings.auto_size and engine.max_size == 512
    assert engine.plan(2000, 1000)[-1].width == 512


def test_adam_keeps_its_moments_when_a_step_raises_the_loss(photo, painting, monkeypatch):
    cleared = []

    class Recording(collections.defaultdict):
        def clear(self):
            cleared.append(len(self))
            super().clear()

    class Adam(torch.optim.Adam):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.state = Recording(dict)

    monkeypatch.setattr(torch.optim, "Adam", Adam)
    losses = []
    StyleTransfer(small(iterations=12, optimizer="adam", learning_rate=0.5)).stylize(
        load_picture(photo), [load_picture(painting)], lambda it: losses.append(it.loss))
    assert any(b >= a for a, b in zip(losses, losses[1:])), "no step raised the loss"
    assert cleared == []


def test_out_of_memory_after_the_loop_is_reported_as_such(photo, painting, monkeypatch):
    from nst_engine import enlarging

    original = enlarging.resize

    def no_memory(image, width, height):
        if (width, height) == (96, 80) and image.shape[-1] != 96:  # the final enlargement
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried...")
        return original(image, width, height)

    monkeypatch.setattr(enlarging, "resize", no_memory)
    with pytest.raises(EngineError) as info:
        StyleTransfer(small(iterations=2)).stylize(load_picture(photo), [load_picture(painting)])
    assert info.value.kind == "out_of_memory" and "--max-size" in info.value.message


def test_cuda_budget_counts_torch_s_cache_and_the_network_once(monkeypatch):
    from nst_engine import devices

    gb = 1e9
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * gb, 80 * gb))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 6 * gb)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0.5 * gb)
    cuda = torch.device("cuda")
    budget = devices.memory_budget(cuda, None)
    # free 10 GB + 5.5 GB cached by torch, 80 % of that, plus the 0.5 GB already held
    assert budget == pytest.approx(0.8 * 15.5 * gb + 0.5 * gb)
    assert devices.fixed_bytes(cuda) == 0.5 * gb  # the network, counted once
    from nst_contract.plan import work_budget

    assert work_budget(budget, devices.fixed_bytes(cuda), 0) == pytest.approx(0.8 * 15.5 * gb)


def test_threads_follow_affinity_and_cgroup_quota(monkeypatch, tmp_path):
    from nst_engine import devices

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    real_path = devices.Path

    def fake_path(name):
        return real_path(tmp_path / "cpu.max") if name == "/sys/fs/cgroup/cpu.max" \
            else real_path(name)

    monkeypatch.setattr(devices, "Path", fake_path)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert devices.usable_cpus() == 3
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    assert devices.usable_cpus() == 2


def test_a_photo_received_as_rgba_gives_the_same_result_to_the_bit(photo, painting):
    """The service keeps the layer as received and works from views of it
    (``picture_from_array(owned=True)``, ``tensors.photo_tensor``): every scale, the
    enlargement and the refinement at full size are the same as from a copy."""
    from nst_engine.pictures import picture_from_array

    content, style = load_picture(photo), [load_picture(painting)]
    height, width = content.rgb.shape[:2]
    rgba = np.concatenate([content.rgb, np.ones((height, width, 1), np.float32)], axis=2)
    received = picture_from_array(rgba, owned=True)
    assert np.shares_memory(received.rgb, rgba)

    def run(picture):
        settings = small(max_size=48, iterations=4, detail="full", detail_steps=2)
        return StyleTransfer(settings).stylize(picture, style).picture.rgb

    assert np.array_equal(run(received), run(content))


def test_a_mirrored_photo_is_taken_too():
    """A library caller's flipped view (negative strides, which torch refuses)."""
    from nst_engine.tensors import photo_tensor

    rgb = np.random.default_rng(6).random((10, 12, 3), dtype=np.float32)
    tensor = photo_tensor(np.fliplr(rgb), torch.device("cpu"))
    assert torch.equal(tensor[0].permute(1, 2, 0), torch.from_numpy(rgb[:, ::-1].copy()))
