"""Driftless Load Images, which the examples use instead of Load Image + Batch Images (deprecated from ComfyUI 0.33):
the same tensors as the core nodes gave, and a missing photo refused before anything runs."""

import torch


def test_the_same_batch_as_load_image_and_batch_images(comfy_host):
    import folder_paths
    import nodes

    from driftless.headless.demo_photos import DEMO_FOLDER, NAMES, write_demo_photos
    from driftless.nodes.training_data import LoadImages

    write_demo_photos(comfy_host.base_directory / "input")
    assert folder_paths.get_input_directory() == str(comfy_host.base_directory / "input")
    images, count = LoadImages.execute(files=f"{DEMO_FOLDER}/sks_cat_*.png").result
    loaded = [nodes.LoadImage().load_image(f"{DEMO_FOLDER}/{name}")[0] for name in NAMES]
    assert count == 3 and torch.equal(images, torch.cat(loaded))


def test_missing_photos_are_refused_at_validation_naming_the_pattern(run_prompt):
    from driftless.headless import runner

    prompt = {
        "photos": {"class_type": "DriftlessLoadImages", "inputs": {"files": "nobody/my_subject_*.png", "size": 0}},
        "preview": {"class_type": "PreviewImage", "inputs": {"images": ["photos", 0]}},
    }
    text = runner.format_validation_errors(run_prompt(prompt, expect_valid=False), prompt)
    assert "matches 'nobody/my_subject_*.png': put the photos there" in text


def test_names_from_a_link_are_checked_when_the_node_runs(run_prompt):
    """Validation cannot see a linked value; the node refuses it when it starts, naming the pattern."""
    prompt = {
        "names": {"class_type": "PrimitiveString", "inputs": {"value": "nobody/*.png"}},
        "photos": {"class_type": "DriftlessLoadImages", "inputs": {"files": ["names", 0], "size": 0}},
        "preview": {"class_type": "PreviewImage", "inputs": {"images": ["photos", 0]}},
    }
    result = run_prompt(prompt)
    assert not result.success and "matches 'nobody/*.png'" in result.error["exception_message"]
