"""The drift benchmark's scores, pure torch on classifier outputs and pixels.

- subject fidelity: mean cosine similarity of classifier features, every sample against every subject
  picture (DreamBench's DINO score with our own feature extractor);
- text alignment: share of "a <colour> sks" samples whose colour the classifier reads as <colour>;
- prior accuracy: share of prior-prompt samples whose shape and colour both match the prompt;
- closeness to the base model: per seed, the personalized sample against the base model's sample of the
  same prompt and noise: feature cosine similarity and pixel RMSE (0 = unchanged).
"""

import torch


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = torch.nn.functional.normalize(a.float(), dim=-1)
    b = torch.nn.functional.normalize(b.float(), dim=-1)
    return a @ b.T


def subject_fidelity(sample_features: torch.Tensor, subject_features: torch.Tensor) -> float:
    return float(cosine_matrix(sample_features, subject_features).mean())


def match_rate(predicted: torch.Tensor, target: torch.Tensor) -> float:
    return float((torch.as_tensor(predicted) == torch.as_tensor(target)).float().mean())


def prior_accuracy(shape_pred, colour_pred, shape_true, colour_true) -> float:
    both = (torch.as_tensor(shape_pred) == torch.as_tensor(shape_true)) & (torch.as_tensor(colour_pred) == torch.as_tensor(colour_true))
    return float(both.float().mean())


def paired_similarity(features: torch.Tensor, base_features: torch.Tensor) -> float:
    """Mean cosine similarity of each sample with the base model's sample at the same prompt and seed."""
    return float(torch.nn.functional.cosine_similarity(features.float(), base_features.float(), dim=-1).mean())


def paired_rmse(images: torch.Tensor, base_images: torch.Tensor) -> float:
    """Root mean squared pixel difference to the base model's samples at the same prompt and seed."""
    return float(((images.float() - base_images.float()) ** 2).mean().sqrt())


def matched_drift(curve: list[tuple[float, float]], fidelity: float) -> float | None:
    """The drift a reference run had when it first reached `fidelity`: `curve` is its (fidelity, drift) points in
    training order, starting from the base model (drift 0); linear between consecutive points. None if it never
    reached that fidelity. Comparing a method's drift with this value compares the two at matched fidelity."""
    for (f0, d0), (f1, d1) in zip(curve, curve[1:]):
        if f0 <= fidelity <= f1 or f1 <= fidelity <= f0:
            return d0 if f1 == f0 else d0 + (d1 - d0) * (fidelity - f0) / (f1 - f0)
    return None


def bootstrap_interval(hits, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """(low, high) of the percentile bootstrap of a share (Efron & Tibshirani 1993, ch. 13): resample the 0/1 hits
    with replacement, take the mean, read the interval off the quantiles; via scipy.stats.bootstrap, seeded. A
    single hit, or hits all alike, give the share itself at both ends (a resample cannot differ from it)."""
    import numpy as np
    from scipy.stats import bootstrap

    data = np.asarray(torch.as_tensor(hits).float().numpy(), dtype=np.float64)
    if data.size < 2 or data.min() == data.max():
        share = float(data.mean()) if data.size else float("nan")
        return share, share
    res = bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=resamples, method="percentile",
                    random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def prior_breakdown(prompts: list[str], shape_pred, colour_pred, shape_true, colour_true, confidence: float = 0.95,
                    resamples: int = 2000, seed: int = 0) -> dict:
    """Per prompt and overall: the shares of samples whose shape, colour, and both (the prior accuracy) are the
    prompted ones, each with its percentile-bootstrap interval. `prompts[i]` names sample i's prompt; the overall
    figure pools every sample (prompts with equal counts weigh alike)."""
    shape_ok = torch.as_tensor(shape_pred) == torch.as_tensor(shape_true)
    colour_ok = torch.as_tensor(colour_pred) == torch.as_tensor(colour_true)
    if not (len(prompts) == shape_ok.numel() == colour_ok.numel()):
        raise ValueError(f"{len(prompts)} prompts for {shape_ok.numel()} shape and {colour_ok.numel()} colour readings")

    def summary(pick: torch.Tensor) -> dict:
        out = {"n": int(pick.sum())}
        for name, ok in (("both", shape_ok & colour_ok), ("shape", shape_ok), ("colour", colour_ok)):
            hits = ok[pick]
            low, high = bootstrap_interval(hits, confidence, resamples, seed)
            out[name] = {"share": float(hits.float().mean()), "low": low, "high": high}
        return out

    order = list(dict.fromkeys(prompts))
    per_prompt = {p: summary(torch.tensor([q == p for q in prompts])) for p in order}
    return {"per_prompt": per_prompt, "overall": summary(torch.ones(len(prompts), dtype=torch.bool)), "confidence": confidence}
