#!/usr/bin/env bash
# Install mgdd-jax with its test dependencies on a fresh Debian machine, then run the tests.
# Needs root (or sudo) for apt; the Debian package provides the real Fashion-MNIST files.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
  $SUDO apt-get install -y dataset-fashion-mnist \
    || { $SUDO apt-get update && $SUDO apt-get install -y dataset-fashion-mnist; }
fi
python -m pip install --quiet -e ".[dev,tfds]"
python -m pytest -q -n 2 "$@"
