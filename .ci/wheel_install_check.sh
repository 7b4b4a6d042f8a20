#!/usr/bin/env bash
# CI: minivit as a learner gets it on Colab or with `pip install`, i.e. NOT an editable install.
# Builds the wheel, installs it in a fresh virtual environment outside the repository with what
# chapter 1 needs, runs chapter 1 under the smoke profile from a folder outside the repository
# with MINIVIT_DATA unset, and checks that minivit came from that environment and that no data
# landed inside its site-packages. Everything it writes lies in one temporary folder (removed at
# the end, unless KEEP_WHEEL_CHECK=1); CIFAR-10 is reached through a symbolic link to data/cifar10.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
start=$(date +%s)
say() { echo "wheel check: $* ($(( $(date +%s) - start )) s)"; }

python="${PYTHON:-$repo/.venv/bin/python}"  # the CI environment: builds the wheel, pins the versions
[ -x "$python" ] || python="$(command -v python3)"
work="$(mktemp -d "${TMPDIR:-/tmp}/minivit-wheel-check.XXXXXX")"
case "$work" in "$repo"/*) echo "wheel check: the temporary folder $work is inside the repository" >&2; exit 1;; esac
if [ "${KEEP_WHEEL_CHECK:-0}" = 1 ]; then echo "wheel check: keeping $work"; else trap 'rm -rf "$work"' EXIT; fi

# 1. The wheel, built from a copy of the sources (a build in place would leave build/ and *.egg-info here).
mkdir -p "$work/src" "$work/dist"
tar -C "$repo" --exclude=__pycache__ --exclude='*.egg-info' -cf - pyproject.toml README.md minivit \
    $(cd "$repo" && ls -d LICENSE* MANIFEST.in setup.cfg 2>/dev/null || true) | tar -C "$work/src" -xf -
isolation=--no-build-isolation  # setuptools of the CI environment, if recent enough; else pip fetches one
"$python" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 64)' 2>/dev/null || isolation=
"$python" -m pip wheel -q --no-deps $isolation -w "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/minivit-*.whl)"
say "built $(basename "$wheel")"

# 2. A fresh virtual environment: the wheel (not editable), torch and torchvision, the other pins of
#    requirements.txt that chapter 1 needs, and nbval, pytest and ipykernel to run the notebook.
#    The CI environment's versions constrain everything, so pip reuses its cache and local wheels.
"$python" -m venv "$work/venv"
"$python" -m pip freeze --exclude-editable | grep -viE '^(minivit|-e )' > "$work/constraints.txt" || true
pins=$(grep -E '^[A-Za-z0-9_.-]+==' "$repo/requirements.txt" | grep -viE '^(jupyterlab|playwright)==' | tr '\n' ' ')
# shellcheck disable=SC2086
"$work/venv/bin/python" -m pip install -q --no-compile --disable-pip-version-check \
    -c "$work/constraints.txt" "$wheel" $pins ipykernel
site="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
say "installed in a fresh environment"

# 3. Chapter 1 from a folder outside the repository, as an installed minivit finds its data:
#    MINIVIT_DATA unset, so $XDG_CACHE_HOME/minivit, where cifar10 links to the repository's copy.
#    HOME is a temporary folder too, so that no kernel, font cache or download lands outside $work.
mkdir -p "$work/run" "$work/home" "$work/xdg/minivit"
[ -d "$repo/data/cifar10" ] && ln -s "$repo/data/cifar10" "$work/xdg/minivit/cifar10"
# The copy of the notebook gets one more cell: the kernel itself says where minivit and the data are.
"$python" - "$repo/notebooks/01_convolution_refresher.ipynb" "$work/run/01_convolution_refresher.ipynb" <<'PY'
import json, sys
notebook = json.load(open(sys.argv[1], encoding="utf-8"))
check = """import sysconfig, minivit, minivit.runtime
site = sysconfig.get_paths()["purelib"]
assert minivit.__file__.startswith(site + "/minivit/"), f"minivit imported from {minivit.__file__}, not {site}"
assert not minivit.data_dir().is_relative_to(site), minivit.data_dir()
print(minivit.runtime.data_dir_reason())"""
notebook["cells"].append({"cell_type": "code", "execution_count": None, "id": "wheel-check", "metadata": {},
                          "outputs": [], "source": check.splitlines(keepends=True)})
json.dump(notebook, open(sys.argv[2], "w", encoding="utf-8"), indent=1, ensure_ascii=False)
PY
cd "$work/run"
export HOME="$work/home" XDG_CACHE_HOME="$work/xdg" MINIVIT_PROFILE=smoke PATH="$work/venv/bin:$PATH"
unset MINIVIT_DATA PYTHONPATH VIRTUAL_ENV
located="$("$work/venv/bin/python" -c 'import minivit, minivit.runtime as r; print(minivit.__file__); print(r.data_dir_reason())')"
echo "$located" | sed 's/^/wheel check: /'
case "$(echo "$located" | head -1)" in
    "$site"/minivit/*) ;;
    *) echo "wheel check: FAILED: minivit was imported from $(echo "$located" | head -1), not from $site" >&2; exit 1;;
esac
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider --nbval-lax 01_convolution_refresher.ipynb
say "chapter 1 passed"

# 4. The data went to the user cache folder, never into site-packages.
if [ -e "$site/data" ]; then
    echo "wheel check: FAILED: $site/data exists: minivit wrote data inside site-packages" >&2; exit 1
fi
ls "$work/xdg/minivit/cache/"cifar10_*.npz >/dev/null \
    || { echo "wheel check: FAILED: no CIFAR-10 cache in \$XDG_CACHE_HOME/minivit/cache" >&2; exit 1; }
say "passed: minivit from the fresh environment's site-packages, data in \$XDG_CACHE_HOME/minivit"
