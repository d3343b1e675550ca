"""Transformer patches for the training forwards: the MODEL's own, then those the regularizers add."""


def with_patches(transformer_options: dict, extra: list[dict]) -> dict:
    """A copy of transformer_options with the regularizers' patches appended (the model's own stay first)."""
    options = dict(transformer_options)
    for patch_set in extra:
        for kind, by_name in patch_set.get("patches", {}).items():
            patches = dict(options.get("patches", {}))
            patches[kind] = [*patches.get(kind, []), *by_name]
            options["patches"] = patches
        for kind, by_block in patch_set.get("patches_replace", {}).items():
            replace = dict(options.get("patches_replace", {}))
            replace[kind] = {**replace.get(kind, {}), **by_block}
            options["patches_replace"] = replace
    return options
