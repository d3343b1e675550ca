"""Personalization metrics as in DreamBench (DINO, CLIP-I, CLIP-T) and drift against the base model.

formulas.py    the similarity formulas on embeddings (plain torch)
prompts.py     prompt lists and the identifier-to-class-noun rewrite CLIP-T uses
preprocess.py  the image processors' resize / crop / normalize, batched on tensors, on the model's device
backbones.py   CLIP and DINO from local folders only (transformers, local_files_only, safetensors)
evaluate.py    the metrics over image batches with given backbones
report.py      the JSON report and the text table
"""
