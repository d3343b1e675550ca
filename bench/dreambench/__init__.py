"""DreamBench for GPU users: the DreamBooth paper's evaluation protocol run with the pack's own trainer, guider
and metrics, from local files only, resumable per subject.

protocol.py  subjects, classes and the two 25-prompt lists (a fallback copy of google/dreambooth's file)
dataset.py   the local dataset folder, its prompts file, subjects and photos
model.py     the checkpoint, loaded as Load Checkpoint loads it
methods.py   the regularizers compared (at their nodes' defaults) and the guidance modes
sampling.py  the prompts sampled with the pack's guider through ComfyUI's samplers; image files
subject.py   one subject under one method: train, sample, score, with its files and resume rules
report.py    the aggregate over subjects (all, objects, live)
runner.py    options, the shared state, the loop over methods and subjects
"""
