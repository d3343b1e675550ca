"""Headless use of ComfyUI with the Driftless pack: boot it in-process, convert and run workflows.

Not imported by the node pack itself (only by `./driftless` and the tests).
"""
