"""The demo's model, in a room of its own: a small SD1.5-shaped text-to-image model of coloured shapes.

- dataset.py: the picture generator (circles, squares, triangles; four colours; three backgrounds; captions);
- pretrain.py: the pretraining recipe (classifier, VAE, UNet), seeded, and its recipe hash;
- classifier.py: the CNN that reads a picture's shape and colour and gives the features scores are made of;
- metrics.py and scorecard.py: the scores (subject fidelity, prompted shape and colour, closeness to the base);
- weights.py and weights/: the shipped pretrained weights, checked against the recipe that made them.

Used by the demo's nodes, the headless demo and the drift benchmark; imports the LoRA plumbing, tinymodels and
ComfyUI, nothing of nodes/, headless/ or bench/.
"""
