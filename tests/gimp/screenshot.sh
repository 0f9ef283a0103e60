#!/usr/bin/env bash
# Screenshot of the plug-in's dialog in a real GIMP 3 under Xvfb, for the docs.
#   tests/gimp/screenshot.sh 3.0|3.2 OUT.png PHOTO STYLE
# Needs root, Xvfb and ImageMagick's import on the host, and a root from provision.sh.
set -euo pipefail
version=$1 out=$2 photo=$3 style=$4
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(bash "$here/provision.sh" "$version")
work=$(mktemp -d "$root/tmp/nst-shot-XXXX")
inside=/${work#"$root"/}
display=:$((90 + RANDOM % 9))
Xvfb "$display" -screen 0 1400x1000x24 -nolisten tcp >/dev/null 2>&1 & xvfb=$!
cleanup() {
  kill "$xvfb" 2>/dev/null || true
  umount "$root/tmp/.X11-unix" "$root/proc" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mount -t proc proc "$root/proc"
mkdir -p "$root/tmp/.X11-unix" && mount --bind /tmp/.X11-unix "$root/tmp/.X11-unix"
mkdir -p "$work/src" && (cd "$here/../.." && git ls-files -z | xargs -0 cp --parents -t "$work/src")
cp "$photo" "$work/photo.${photo##*.}" && cp "$style" "$work/style.${style##*.}"
run() { chroot "$root" env -i PATH=/usr/bin:/bin HOME="$inside" LANG=C.UTF-8 "$@"; }
run bash "$inside/src/install.sh" --python /usr/bin/python3 --venv "$inside/venv" \
  --no-weights --gimp-profile "$inside/profile" >/dev/null
cat > "$work/dialog.py" <<PY
from gi.repository import Gimp, Gio
image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path("$inside/photo.${photo##*.}"))
Gimp.Display.new(image)
proc = Gimp.get_pdb().lookup_procedure("python-fu-neural-style-transfer")
cfg = proc.create_config()
cfg.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
cfg.set_property("image", image)
cfg.set_core_object_array("drawables", image.get_layers()[:1])
cfg.set_property("style-file", Gio.File.new_for_path("$inside/style.${style##*.}"))
proc.run(cfg)
PY
run DISPLAY="$display" GIMP3_DIRECTORY="$inside/profile" timeout 90 "gimp-$version" \
  --no-splash --batch-interpreter=python-fu-eval \
  -b "exec(open('$inside/dialog.py').read())" >/dev/null 2>&1 & gimp=$!
sleep "${NST_SHOT_WAIT:-40}"
import -display "$display" -window root "$out"
kill "$gimp" 2>/dev/null || true
pkill -f "gimp-$version --no-splash" 2>/dev/null || true
echo "$out"
