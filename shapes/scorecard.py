"""The drift benchmark's scores for one prompt, base against personalized: what the demo shows on its model.

Given samples of the base and the personalized model drawn with the same prompt and seeds, and the subject
pictures, each score of metrics.py is computed for both models where it applies:
- subject fidelity: classifier-feature cosine of each sample against each subject picture;
- shape / colour as prompted: share of samples the classifier reads as the shape and the colour the prompt
  names (only when it names one the dataset knows: the subject's cross is not a class);
- similarity and pixel RMSE to the base model's sample at the same seed (personalized only): the drift.
"""

import torch

from . import dataset, metrics


def prompt_labels(prompt: str) -> tuple[str | None, str | None]:
    """(shape, colour) the prompt names, from the dataset's vocabulary; None where it names none. Background
    colours ("on a white background") are not the shape's colour."""
    words = prompt.lower().replace(",", " ").split()
    shape = next((w for w in words if w in dataset.SHAPES), None)
    colour = None
    for i, word in enumerate(words):
        if word in dataset.COLOURS and not (i + 1 < len(words) and words[i + 1] == "background"):
            colour = word
            break
    return shape, colour


@torch.no_grad()
def scorecard(net, prompt: str, subject: torch.Tensor, base: torch.Tensor, personalized: torch.Tensor) -> dict:
    """{score name: {"base": value, "personalized": value}} for samples drawn with `prompt`."""
    if base.shape != personalized.shape:
        raise ValueError(f"base {tuple(base.shape)} and personalized {tuple(personalized.shape)} samples must pair up: "
                         "same prompt, same seeds, same size")
    for images, what in ((base, "samples"), (subject, "subject pictures")):
        if images.shape[1:3] != (dataset.SIZE, dataset.SIZE):
            raise ValueError(f"the shapes classifier reads {dataset.SIZE}x{dataset.SIZE} pictures, got {what} of "
                             f"{images.shape[2]}x{images.shape[1]}: sample from an Empty Latent Image of 64x64 and "
                             "give the pictures the LoRA was trained on")
    feats = {name: net.features(images.float()) for name, images in (("base", base), ("personalized", personalized))}
    subject_f = net.features(subject.float())
    scores = {"subject fidelity": {k: metrics.subject_fidelity(f, subject_f) for k, f in feats.items()}}
    shape, colour = prompt_labels(prompt)
    if shape is not None:  # the classifier's heads on the features above: one forward per picture
        target = torch.full((base.shape[0],), dataset.SHAPES.index(shape))
        scores[f"shape is {shape}"] = {k: metrics.match_rate(net.shape_head(f).argmax(1), target) for k, f in feats.items()}
    if colour is not None:
        target = torch.full((base.shape[0],), list(dataset.COLOURS).index(colour))
        scores[f"colour is {colour}"] = {k: metrics.match_rate(net.colour_head(f).argmax(1), target) for k, f in feats.items()}
    scores["similarity to base"] = {"base": 1.0, "personalized": metrics.paired_similarity(feats["personalized"], feats["base"])}
    scores["pixel RMSE to base"] = {"base": 0.0, "personalized": metrics.paired_rmse(personalized, base)}
    return scores


MEANING = {
    "subject fidelity": "cosine of classifier features to the subject pictures (higher = more like the subject)",
    "shape is": "share of samples the classifier reads as the prompted shape",
    "colour is": "share of samples the classifier reads as the prompted colour",
    "similarity to base": "feature cosine to the base sample at the same seed (1 = unchanged)",
    "pixel RMSE to base": "pixel difference to the base sample at the same seed (0 = unchanged)",
}


def meaning(name: str) -> str:
    """What a score of the scorecard measures ("shape is circle" -> the "shape is" entry)."""
    return next(text for key, text in MEANING.items() if name.startswith(key))


def rows(scores: dict) -> list[list[str]]:
    """The scorecard as table cells: a header, then score, base, personalized, meaning."""
    return [["score", "base", "personalized", "meaning"],
            *([name, f"{v['base']:.3f}", f"{v['personalized']:.3f}", meaning(name)] for name, v in scores.items())]
