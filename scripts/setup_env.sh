#!/usr/bin/env bash
# Create .venv (once) with the pinned dependencies and this package installed in editable mode.
# With a sourced ROS 2 (rclpy importable by the system python) the venv sees its packages and the
# ROS 2 wheels are not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VIDEO_SEG_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.installed-$(cat requirements.txt requirements-ros.txt setup.py | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
if "$PY" -c "import rclpy" >/dev/null 2>&1; then
  echo "[setup] using the sourced ROS 2 ($(command -v ros2 || echo rclpy importable))"
  [ -d "$VENV" ] || "$PY" -m venv --system-site-packages "$VENV"
  ros_reqs=()
else
  [ -d "$VENV" ] || "$PY" -m venv "$VENV"
  ros_reqs=(-r requirements-ros.txt)
fi
echo "[setup] installing pinned dependencies into $VENV (first run only; a few minutes)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt "${ros_reqs[@]}"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
rm -f "$VENV"/.installed-*
touch "$stamp"
