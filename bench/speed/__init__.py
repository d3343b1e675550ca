"""`./driftless bench speed`: Driftless against the stock ComfyUI path, side by side in one process."""
