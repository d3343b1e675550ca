"""The LoRA plumbing every room shares: the adapter on activations (adapter.py), which layers it targets
(targets.py), the file formats (formats/), reading and writing LoRA files (files.py), fingerprints of base
models and LoRAs (fingerprint.py), and atomic safetensors storage (storage.py).

It imports torch, safetensors and (inside functions) ComfyUI; nothing of trainers/, guidance/ or nodes/.
"""
