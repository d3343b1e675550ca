"""Benchmarks: ratios against the stock ComfyUI path, measured interleaved in one process."""
