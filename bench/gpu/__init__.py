"""The device command (bench/gpu/run.sh) and its report."""
