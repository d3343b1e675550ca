"""Continual personalization: concepts learned one after another, without images of earlier ones.

Jha et al., "Mining your own secrets: Diffusion Classifier Scores for Continual Personalization of
Text-to-Image Diffusion Models", ICLR 2025 (arXiv 2410.00700). One LoRA is fine-tuned concept after
concept; after each concept its snapshot and a diagonal Fisher go into a concept pool, which the next
concept's training reads.

- scores.py   diffusion-classifier (DC) scores: softmax over concepts of −‖F* − F_θ(x_t, c_j)‖²
- fisher.py   the diagonal Fisher (from DC cross-entropy or from the denoising loss), online folding
- ewc.py      the EWC penalty (λ/2)·Σ F·(θ − θ*)²
- dsc.py      diffusion-score consolidation: DC-score and noise-prediction distillation from two teachers
- pool.py     the concept pool and its file (safetensors tensors, JSON metadata, atomic writes)
- seam.py     a MODEL with LoRA adapters on a clone, for the Fisher pass and the retention report
- learn.py    folding a trained LoRA into the pool (the Fisher pass)
- retention.py  the retention report on held-out images

The pure math (scores, fisher, ewc, dsc) imports torch only.
"""
