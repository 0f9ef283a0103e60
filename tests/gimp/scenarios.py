# Runs inside gimp-console's python-fu-eval.
# Each scenario calls python-fu-neural-style-transfer through the PDB and prints one
# line "NST-RESULT <name> <json>" that tests/test_gimp_e2e.py reads.
import json
import os
import sys
import time
import traceback
from array import array

import gi

gi.require_version("Gegl", "0.4")
gi.require_version("Gimp", "3.0")
from gi.repository import Gegl, Gimp, Gio  # noqa: E402

Gegl.init(None)
STYLE = os.environ["NST_E2E_STYLE"]
PROC = "python-fu-neural-style-transfer"


def report(name, **values):
    print(f"NST-RESULT {name} {json.dumps(values)}", flush=True)


def pixels(drawable, fmt=None):
    if fmt is None:
        fmt = ("Y'" if drawable.is_gray() else "R'G'B'") + ("A" if drawable.has_alpha() else "")
        fmt += " float"
    rect = Gegl.Rectangle.new(0, 0, drawable.get_width(), drawable.get_height())
    return array("f", bytes(drawable.get_buffer().get(rect, 1.0, fmt, Gegl.AbyssPolicy.CLAMP)))


def fill(layer, channels, alpha_varies=False):
    width, height = layer.get_width(), layer.get_height()
    data = array("f")
    for y in range(height):
        for x in range(width):
            values = [x / (width - 1), y / (height - 1), ((x * 7 + y * 3) % 50) / 49.0]
            color = values[:1] if channels in (1, 2) else values
            data.extend(color)
            if channels in (2, 4):
                data.append(0.25 + 0.75 * ((x + y) % 17) / 16 if alpha_varies else 1.0)
    fmt = {1: "Y' float", 2: "Y'A float", 3: "R'G'B' float", 4: "R'G'B'A float"}[channels]
    buffer = layer.get_buffer()
    buffer.set(Gegl.Rectangle.new(0, 0, width, height), fmt, data.tobytes())
    buffer.flush()


def make_image(width=72, height=56, base=Gimp.ImageBaseType.RGB,
               precision=Gimp.Precision.U8_NON_LINEAR, alpha=True, alpha_varies=False,
               layer_size=None, offsets=(0, 0)):
    image = Gimp.Image.new_with_precision(width, height, base, precision)
    lw, lh = layer_size or (width, height)
    gray = base == Gimp.ImageBaseType.GRAY
    if gray:
        kind = Gimp.ImageType.GRAYA_IMAGE if alpha else Gimp.ImageType.GRAY_IMAGE
    else:
        kind = Gimp.ImageType.RGBA_IMAGE if alpha else Gimp.ImageType.RGB_IMAGE
    layer = Gimp.Layer.new(image, "photo", lw, lh, kind, 100.0, Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    layer.set_offsets(*offsets)
    fill(layer, (1 if gray else 3) + (1 if alpha else 0), alpha_varies)
    return image, layer


def run(image, drawables, style=STYLE, **overrides):
    proc = Gimp.get_pdb().lookup_procedure(PROC)
    cfg = proc.create_config()
    cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    cfg.set_property("image", image)
    cfg.set_core_object_array("drawables", drawables)
    cfg.set_property("style-file", Gio.File.new_for_path(style))
    settings = {"iterations": 3, "max-size": 64, "device": "cpu", "seed": 1}
    settings.update(overrides)
    for key, value in settings.items():
        cfg.set_property(key, value)
    result = proc.run(cfg)
    status = result.index(0)
    message = ""
    if status != Gimp.PDBStatusType.SUCCESS and result.length() > 1:
        message = str(result.index(1))
    return status.value_nick, message


def describe(layer):
    _, x, y = layer.get_offsets()
    return {
        "name": layer.get_name(), "width": layer.get_width(), "height": layer.get_height(),
        "x": x, "y": y, "has_alpha": layer.has_alpha(), "has_mask": layer.get_mask() is not None,
        "gray": layer.is_gray(),
    }


def stack(image, parent=None):
    layers = parent.get_children() if parent else image.get_layers()
    return [layer.get_name() for layer in layers]


def registration():
    proc = Gimp.get_pdb().lookup_procedure(PROC)
    specs = proc.get_arguments()
    defaults = {}
    for spec in specs:
        entry = {"default": spec.get_default_value(), "help": spec.get_blurb(),
                 "label": spec.get_nick()}
        if hasattr(spec, "minimum"):
            entry.update(min=spec.minimum, max=spec.maximum)
        if isinstance(entry["default"], str):  # only the choices are strings
            entry["choices"] = list(Gimp.param_spec_choice_get_choice(spec).list_nicks())
        if isinstance(entry["default"], (bool, int, float, str)):
            defaults[spec.get_name()] = entry
    report("registration", menu_paths=list(proc.get_menu_paths()),
           label=proc.get_menu_label(), image_types=proc.get_image_types(),
           arguments=[spec.get_name() for spec in specs], defaults=defaults,
           gimp=Gimp.version())


def marked_style(marker):
    """A copy of the style named for what the test's watcher does to this run; the
    marker file tells the watcher which run is on."""
    path = os.path.join(os.path.dirname(STYLE), f"{marker}-style.png")
    with open(STYLE, "rb") as source, open(path, "wb") as target:
        target.write(source.read())
    with open(os.environ["NST_E2E_MARKER"], "w") as handle:
        handle.write(marker)
    return path


def state(image):
    """What must not change after a failed run: layers, channels, and the dirty flag
    (every undo step sets it)."""
    return {"layers": stack(image), "channels": len(image.get_channels()),
            "dirty": image.is_dirty()}


def killed():
    """The test kills the plug-in process mid-run (as GIMP's progress-bar cancel does)."""
    image, layer = make_image(300, 260)  # two scales: the coarse one never stops by itself
    image.clean_all()
    before = pixels(layer)
    status, message = run(image, [layer], style=marked_style("kill-me"), iterations=5000,
                          **{"max-size": 256})
    done = os.environ["NST_E2E_MARKER"] + ".measured"
    for _ in range(400):  # the watcher measures the engine before the next run uses it
        if os.path.exists(done):
            break
        time.sleep(0.1)
    report("killed", status=status, message=message, source_unchanged=before.tobytes() ==
           pixels(layer).tobytes(), **state(image))
    image.delete()


def kept_early():
    """The test sends the plug-in SIGUSR1 (Keep this result) after a few steps."""
    image, layer = make_image(300, 260)
    image.clean_all()
    status, message = run(image, [layer], style=marked_style("keep-me"), iterations=5000,
                          **{"max-size": 256})
    report("kept_early", status=status, message=message, **state(image))
    image.delete()


def basic():
    image, layer = make_image(layer_size=(60, 44), offsets=(5, 7), alpha_varies=True)
    other = Gimp.Layer.new(image, "above", 72, 56, Gimp.ImageType.RGBA_IMAGE, 100.0,
                           Gimp.LayerMode.NORMAL)
    image.insert_layer(other, None, 0)
    image.set_selected_layers([layer])
    before = pixels(layer)
    status, message = run(image, [layer])
    layers = image.get_layers()
    new = layers[1]
    after_source = pixels(layer)
    result = pixels(new)
    report("basic", status=status, message=message, stack=stack(image), new=describe(new),
           source=describe(layer), source_unchanged=before.tobytes() == after_source.tobytes(),
           alpha_equal=list(result[3::4]) == list(before[3::4]),
           changed=sum(abs(a - b) for a, b in zip(result, before)) / len(before))
    image.delete()


def series():
    """Two runs on the same photo: each result on top of the photo's earlier ones,
    named for the painting and the strength, with its recipe, and the photo the
    active layer again after each run (the next run paints it, not a result)."""
    image, layer = make_image()
    other = Gimp.Layer.new(image, "above", 72, 56, Gimp.ImageType.RGBA_IMAGE, 100.0,
                           Gimp.LayerMode.NORMAL)
    image.insert_layer(other, None, 0)
    image.set_selected_layers([layer])
    outcomes, selected = [], []
    for strength, keep in ((0.3, False), (0.8, True)):
        outcomes.append(run(image, [layer], **{"style-strength": strength,
                                               "preserve-colors": keep}))
        selected.append([item.get_name() for item in image.get_selected_layers()])
    newest = image.get_layers()[1]
    parasite = newest.get_parasite("nst-result")
    recipe = json.loads(bytes(parasite.get_data()).decode()) if parasite else None
    report("series", outcomes=outcomes, stack=stack(image), selected=selected,
           recipe=recipe, photo_tattoo=layer.get_tattoo(),
           persistent=bool(parasite and parasite.get_flags() & Gimp.PARASITE_PERSISTENT))
    image.delete()


def engine_services():
    """The warm engine services running now (process ids), seen from GIMP's side."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    args = handle.read().split(b"\0")
            except OSError:
                continue
            if b"nst_engine" in args and b"serve" in args:
                found.add(int(entry))
    return sorted(found)


def batch_of_three():
    """GIMP's own batch tools (Batcher) call the filter non-interactively, image after
    image in one session: three images, each its result and nothing else, the photo
    unchanged and active, all painted by one warm engine; a fourth image untouched."""
    images, outcomes, services = [], [], []
    for index in range(3):
        image, layer = make_image(64 + 8 * index, 48)
        image.clean_all()
        images.append((image, layer, pixels(layer)))
    bystander, _ = make_image()
    bystander.clean_all()
    for image, layer, _ in images:
        outcomes.append(run(image, [layer], **{"style-strength": 0.7}))
        services.append(engine_services())
    report("batch_of_three", outcomes=outcomes, services=services,
           images=[{"stack": stack(image), "dirty": image.is_dirty(),
                    "photo_unchanged": pixels(layer).tobytes() == before.tobytes(),
                    "selected": [item.get_name() for item in image.get_selected_layers()],
                    "size": [image.get_layers()[0].get_width(),
                             image.get_layers()[0].get_height()]}
                   for image, layer, before in images],
           bystander={"stack": stack(bystander), "dirty": bystander.is_dirty()})
    for image, _, _ in images:
        image.delete()
    bystander.delete()


def recipe():
    """A result's recipe survives an .xcf saved and opened again, and a run from it
    (what the dialog opens with on a result layer) paints the photo again with the
    result's painting and settings — "the same, a bit stronger"."""
    sys.path.insert(0, os.path.join(os.environ["GIMP3_DIRECTORY"], "plug-ins",
                                    "neural-style-transfer"))
    import nst_layers

    image, layer = make_image()
    first = run(image, [layer], **{"style-strength": 0.3, "seed": 7})
    path = os.path.join(os.path.dirname(STYLE), "with-result.xcf")
    Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, image, Gio.File.new_for_path(path), None)
    image.delete()
    image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(path))
    result = image.get_layers()[0]
    recipe = nst_layers.recipe_of(result)
    saved = json.loads(bytes(result.get_parasite("nst-result").get_data()).decode())
    config = Gimp.get_pdb().lookup_procedure(PROC).create_config()
    targets, note = nst_layers.from_recipe(image, result, recipe, config)
    taken = {name: config.get_property(name)
             for name in ("style-strength", "seed", "max-size", "iterations")}
    config.set_property("style-strength", 0.5)  # a bit stronger
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", targets)
    second = Gimp.get_pdb().lookup_procedure(PROC).run(config).index(0).value_nick
    report("recipe", outcomes=[first[0], second], saved=saved, targets=[
        t.get_name() for t in targets], taken=taken, note=note, stack=stack(image),
        style_file=config.get_property("style-file").get_path(),
        thumbnail_png=recipe.painting.thumbnail_png[:8].hex()
        if recipe.painting.thumbnail_png else None)
    image.delete()


def style_from_layer():
    """The painting taken from a layer of another open image, not from its file: the
    same result as the file gives, named for the layer."""
    painting = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(STYLE))
    painting_layer = painting.get_layers()[0]
    painting_layer.set_name("open painting")
    notes = Gimp.Layer.new(painting, "notes", 8, 8, Gimp.ImageType.RGBA_IMAGE, 100.0,
                           Gimp.LayerMode.NORMAL)
    painting.insert_layer(notes, None, 0)  # another layer: the result names this one
    outcomes, results = [], []
    for style_layer in (None, painting_layer):
        image, layer = make_image()
        outcomes.append(run(image, [layer], **{"style-layer": style_layer}))
        results.append(pixels(image.get_layers()[0]))
        names = stack(image)
        image.delete()
    report("style_from_layer", outcomes=outcomes, stack=names,
           largest_difference=max(abs(a - b) for a, b in zip(*results)),
           painting_layers=len(painting.get_layers()))
    painting.delete()


def refined():
    """The refinement at full size, through the plug-in: a 16-bit layer with offsets and
    varying alpha keeps them; the result differs from the enlargement alone."""
    results = {}
    for detail in ("full", "working"):
        image, layer = make_image(width=180, height=140, layer_size=(150, 110),
                                  offsets=(9, 4), alpha_varies=True,
                                  precision=Gimp.Precision.U16_NON_LINEAR)
        before = pixels(layer)
        status, message = run(image, [layer], detail=detail)
        new = image.get_layers()[0]
        result = pixels(new)
        results[detail] = result
        if detail == "full":
            report_values = dict(
                status=status, message=message, new=describe(new),
                alpha_equal=list(result[3::4]) == list(before[3::4]),
                levels=len(set(pixels(new, "R'G'B'A u16")[0::4])))
        image.delete()
    report("refined", **report_values,
           differs=sum(abs(a - b) for a, b in zip(results["full"], results["working"]))
           / len(results["full"]))


def deep():
    image, layer = make_image(precision=Gimp.Precision.U16_NON_LINEAR)
    status, message = run(image, [layer])
    new = image.get_layers()[0]
    red = pixels(new, "R'G'B'A u16")
    report("deep", status=status, message=message, levels=len(set(red[0::4])))
    image.delete()


def deep_float_levels():
    image, layer = make_image(precision=Gimp.Precision.FLOAT_NON_LINEAR)
    status, message = run(image, [layer])
    new = image.get_layers()[0]
    report("float", status=status, message=message,
           levels=len(set(pixels(new)[0::4])))
    image.delete()


WIDE_GAMUT = "/usr/share/color/icc/ghostscript/a98.icc"  # Adobe RGB (1998), from ghostscript


def linear_wide_gamut():
    """A 32-bit linear-light layer in Adobe RGB, with Preserve colours: the plug-in
    reads and writes the same encoding, so the result differs from the photo, read
    the same way, by a shift of luma only (equal in R', G' and B') wherever neither is
    clipped — a mix-up of linear and perceptual values, or of colour spaces, breaks it."""
    image, layer = make_image(precision=Gimp.Precision.FLOAT_LINEAR, alpha_varies=True)
    if os.path.exists(WIDE_GAMUT):  # in the Debian roots; a GIMP on the PATH may lack it
        image.set_color_profile(
            Gimp.ColorProfile.new_from_file(Gio.File.new_for_path(WIDE_GAMUT)))
    before = pixels(layer)
    status, message = run(image, [layer], **{"preserve-colors": True})
    new = image.get_layers()[0]
    after = pixels(new)
    spread, checked = 0.0, 0
    for i in range(0, len(before), 4):
        old, now = before[i:i + 3], after[i:i + 3]
        if all(0.02 < v < 0.98 for v in (*old, *now)):
            shifts = [n - o for n, o in zip(now, old)]
            spread = max(spread, max(shifts) - min(shifts))
            checked += 1
    report("linear_wide_gamut", status=status, message=message, checked=checked,
           pixels=len(before) // 4, spread=spread,
           moved=sum(abs(a - b) for a, b in zip(after, before)) / len(before),
           alpha_equal=list(after[3::4]) == list(before[3::4]),
           precision=image.get_precision().value_nick,
           profile=image.get_effective_color_profile().get_label())
    image.delete()


def gray():
    image, layer = make_image(base=Gimp.ImageBaseType.GRAY, alpha=False)
    status, message = run(image, [layer])
    report("gray", status=status, message=message, stack=stack(image),
           new=describe(image.get_layers()[0]))
    image.delete()


def selection():
    image, layer = make_image()
    image.select_ellipse(Gimp.ChannelOps.REPLACE, 10, 8, 40, 30)
    status, message = run(image, [layer])
    report("selection", status=status, message=message, new=describe(image.get_layers()[0]))
    image.delete()


def missing_style():
    image, layer = make_image()
    before = pixels(layer)
    status, message = run(image, [layer], style="/nonexistent/painting.jpg")
    report("missing_style", status=status, message=message, layers=len(image.get_layers()),
           source_unchanged=before.tobytes() == pixels(layer).tobytes())
    image.delete()


def over_ssh():
    """A run with the engine reached over SSH (the profile's config names the host)."""
    image, layer = make_image()
    image.clean_all()
    status, message = run(image, [layer])
    report("over_ssh", status=status, message=message, **state(image))
    image.delete()


def ssh_dropped():
    """The test drops the SSH connection mid-run."""
    image, layer = make_image(300, 260)
    image.clean_all()
    status, message = run(image, [layer], style=marked_style("drop-me"), iterations=5000,
                          **{"max-size": 256})
    done = os.environ["NST_E2E_MARKER"] + ".measured"
    for _ in range(400):
        if os.path.exists(done):
            break
        time.sleep(0.1)
    report("ssh_dropped", status=status, message=message, **state(image))
    image.delete()


def bad_style():
    image, layer = make_image()
    image.clean_all()
    broken = os.path.join(os.path.dirname(STYLE), "broken.jpg")
    with open(broken, "wb") as handle:
        handle.write(b"not really a jpeg")
    status, message = run(image, [layer], style=broken)
    report("bad_style", status=status, message=message, **state(image))
    image.delete()


def in_group():
    image, layer = make_image()
    group = Gimp.GroupLayer.new(image, "group")
    image.insert_layer(group, None, 0)
    inner = Gimp.Layer.new(image, "inner", 40, 30, Gimp.ImageType.RGBA_IMAGE, 100.0,
                           Gimp.LayerMode.NORMAL)
    image.insert_layer(inner, group, 0)
    inner.set_offsets(3, 4)
    fill(inner, 4)
    status, message = run(image, [inner])
    report("group", status=status, message=message, top=stack(image),
           children=stack(image, group), new=describe(group.get_children()[0]))
    image.delete()


def two_layers():
    image, layer = make_image()
    second = Gimp.Layer.new(image, "second", 72, 56, Gimp.ImageType.RGBA_IMAGE, 100.0,
                            Gimp.LayerMode.NORMAL)
    image.insert_layer(second, None, 0)
    status, message = run(image, [layer, second])
    report("two_layers", status=status, message=message, layers=len(image.get_layers()))
    image.delete()


def big():
    """A 6000×4000 (24 MP) layer, for benchmarks/plugin_overhead.py (not a test)."""
    image = Gimp.Image.new(6000, 4000, Gimp.ImageBaseType.RGB)
    layer = Gimp.Layer.new(image, "photo", 6000, 4000, Gimp.ImageType.RGBA_IMAGE, 100.0,
                           Gimp.LayerMode.NORMAL)
    image.insert_layer(layer, None, 0)
    Gimp.context_set_foreground(Gegl.Color.new("orange"))
    layer.fill(Gimp.FillType.FOREGROUND)
    status, message = run(image, [layer], iterations=1, **{"max-size": 64})
    report("big", status=status, message=message, layers=len(image.get_layers()))
    image.delete()


for scenario in os.environ.get("NST_E2E_SCENARIOS", "").split(","):
    try:
        globals()[scenario]()
    except Exception:
        report(scenario, status="exception", message=traceback.format_exc())
sys.stdout.flush()
