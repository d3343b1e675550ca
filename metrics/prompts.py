"""Prompts for CLIP-T: one per image, and the identifier taken out so the text is what the image should show.

DreamBench prompts carry a rare-token identifier ("a sks dog in the snow"). CLIP has never seen "sks", so
CLIP-T compares the image with the prompt where the identifier is removed or replaced by the class noun
(DreamBooth, §4.1; implementations differ, docs/papers.md §8). The rule here:

- an identifier followed by the class noun ("sks dog", or its plural) is removed: "a dog in the snow";
- an identifier standing alone ("a photo of sks") is replaced by the class noun: "a photo of dog";
- with no class noun given, identifiers are removed.

Identifiers match whole words, case-insensitively; several can be given ("sks, <new1>").
"""

import re


def split_lines(text: str) -> list[str]:
    """Non-empty, stripped lines of a multi-line text box."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def split_identifiers(text: str) -> list[str]:
    """'sks, <new1>' -> ['sks', '<new1>'] (commas or whitespace separate)."""
    return [t for t in re.split(r"[,\s]+", text or "") if t]


def per_image(prompts: list[str], n_images: int) -> list[str]:
    """The prompt of each image: one prompt for all, one per image, or P prompts each for n/P consecutive images
    (a batch made prompt after prompt, e.g. 4 images per prompt as in DreamBench)."""
    p = len(prompts)
    if p == 0:
        raise ValueError("prompts: give at least one prompt (one line per prompt)")
    if p == 1 or p == n_images:
        return list(prompts) * (n_images if p == 1 else 1)
    if n_images % p == 0:
        k = n_images // p
        return [prompt for prompt in prompts for _ in range(k)]
    raise ValueError(
        f"prompts: {p} lines for {n_images} images; give 1 (shared), {n_images} (one per image), or a number that "
        f"divides {n_images} (each prompt for that many consecutive images)"
    )


def neutralize(prompt: str, identifiers: list[str], class_noun: str = "") -> str:
    """The prompt with each identifier removed, or replaced by the class noun where the noun does not follow it."""
    noun = (class_noun or "").strip()
    for identifier in identifiers:
        word = re.escape(identifier)
        boundary_l, boundary_r = (r"(?<!\w)", r"(?!\w)")
        if noun:
            followed = re.compile(boundary_l + word + r"\s+(?=" + re.escape(noun) + r"(?:e?s)?(?!\w))", re.IGNORECASE)
            prompt = followed.sub("", prompt)
            prompt = re.sub(boundary_l + word + boundary_r, noun.replace("\\", r"\\"), prompt, flags=re.IGNORECASE)
        else:
            prompt = re.sub(boundary_l + word + boundary_r, "", prompt, flags=re.IGNORECASE)
    prompt = re.sub(r"\s+([,.;:!?])", r"\1", prompt)
    return re.sub(r"\s{2,}", " ", prompt).strip()


def contains_identifier(prompt: str, identifiers: list[str]) -> bool:
    return any(re.search(r"(?<!\w)" + re.escape(i) + r"(?!\w)", prompt, re.IGNORECASE) for i in identifiers)
