#!/usr/bin/env bash
# Install mgdd-jax with its test dependencies on a fresh Debian machine, then run the tests.
# Needs root (or sudo) for apt; the Debian package provides the real Fashion-MNIST files.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
# Real Fashion-MNIST files for the loader tests; fonts for the glyph corpus tests.
PKGS="dataset-fashion-mnist fonts-dejavu-core"
if ! dpkg -s $PKGS >/dev/null 2>&1; then
  $SUDO apt-get install -y $PKGS || { $SUDO apt-get update && $SUDO apt-get install -y $PKGS; }
fi
python -m pip install --quiet -e ".[dev,tfds]"
python -m pytest -q -n 2 --durations=30 "$@"
