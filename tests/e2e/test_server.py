"""The pack inside a real ComfyUI server, reached the way the web UI and API clients reach it."""

import json
import threading
import time

from driftless.headless import workflow


def test_object_info_lists_every_node_with_its_declared_inputs(comfy_server):
    from driftless.nodes import all_nodes

    info = comfy_server.get("/object_info")
    for node in all_nodes():
        schema = node.define_schema()
        entry = info[schema.node_id]
        assert entry["display_name"] == schema.display_name
        assert entry["category"] == schema.category
        declared = {i.id for i in schema.inputs}
        listed = set(entry["input"].get("required", {})) | set(entry["input"].get("optional", {}))
        assert listed == declared
        assert entry["python_module"].startswith("custom_nodes.driftless")
    tiny = info["DriftlessTinyModel"]["input"]["required"]
    from driftless.tinymodels.configs import CONFIGS

    assert tiny["architecture"][1]["options"] == list(CONFIGS)
    assert {"sd15-tiny", "sdxl-tiny", "sd15-bench", "sdxl-bench"} <= set(CONFIGS)
    assert tiny["seed"][1]["min"] == 0 and tiny["seed"][1]["max"] == 2**31 - 1
    assert info["DriftlessTinyModel"]["output"] == ["MODEL", "CLIP", "VAE"]


def test_demo_workflow_runs_to_success_through_prompt(comfy_server, repo):
    """The UI-format demo (photos -> LoRA -> samples -> metrics), converted against the live /object_info, via
    POST /prompt; the metrics nodes find the demo backbones written into the server's models folder."""
    from driftless.headless import demo_backbones
    from driftless.headless.demo_photos import write_demo_photos

    write_demo_photos(comfy_server.base / "input")
    demo_backbones.write_demo_backbones(comfy_server.base / "models")
    live = comfy_server.get("/object_info")
    clip_options = live["DriftlessPersonalizationMetrics"]["input"]["required"]["clip_model"][1]["options"]
    assert demo_backbones.CLIP in clip_options  # listed by the server that did not write them
    ui = workflow.load_workflow_file(repo / "example_workflows" / "tiny" / "personalize_and_guide_tiny.json")
    prompt = workflow.to_api_format(ui, live)
    entry = comfy_server.wait(comfy_server.queue(prompt))
    assert entry["status"]["status_str"] == "success", entry["status"]
    outputs = entry["outputs"].values()
    saved = [image for output in outputs for image in output.get("images", []) if image["type"] == "output"]
    assert len(saved) == 7  # loss curve + 2 personalized + 2 base samples + 2 prior pairs
    for image in saved:
        path = comfy_server.base / "output" / image["subfolder"] / image["filename"]
        assert path.stat().st_size > 0
    reports = [report for output in outputs for report in output.get("reports", [])]
    assert sorted(r["subfolder"] + "/" + r["filename"].split("_")[0] for r in reports) == [
        "driftless_demo/drift", "driftless_demo/metrics"]
    for report in reports:
        data = json.loads((comfy_server.base / "output" / report["subfolder"] / report["filename"]).read_text())
        assert data["format"] == "driftless.metrics.v1" and data["metrics"]
    tables = [output for output in outputs if output.get("reports")]
    assert all(t["images"][0]["type"] == "temp" and "report:" in t["text"][0] for t in tables)  # the table on the node
    assert (comfy_server.base / "models" / "loras" / "driftless_demo" / "lora.safetensors").stat().st_size > 0


def test_continual_twin_learns_two_concepts_into_one_pool_through_prompt(comfy_server, repo):
    """The continual example's tiny twin via POST /prompt: two concepts in sequence against one pool, the pool
    saved with both (the second trained from the first's LoRA), a retention report over both, and the sample row."""
    import numpy as np
    from PIL import Image

    from driftless.headless.demo_photos import write_demo_photos
    from driftless.trainers.continual.pool import load_pool

    write_demo_photos(comfy_server.base / "input")
    ui = workflow.load_workflow_file(repo / "example_workflows" / "tiny" / "continual_tiny.json")
    prompt = workflow.to_api_format(ui, comfy_server.get("/object_info"))
    by_type = {}
    for node_id, node in prompt.items():
        by_type.setdefault(node["class_type"], []).append(node_id)
    assert len(by_type["DriftlessTrainLoRA"]) == 2 and len(by_type["DriftlessAddConcept"]) == 2
    first, second = sorted(by_type["DriftlessAddConcept"], key=int)
    assert prompt[second]["inputs"]["pool"] == [first, 0]  # concept 2 is added to the pool that holds concept 1
    entry = comfy_server.wait(comfy_server.queue(prompt), timeout=600)
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"][-1][1].get("exception_message")
    pool = load_pool(comfy_server.base / "models" / "driftless" / "concept_pools" / "driftless_demo_concepts.safetensors")
    assert pool.triggers == ["sks cat", "zwx cup"] and pool.method == "EWC-DC"
    assert all(float(v.abs().sum()) > 0 for v in pool.concepts[-1].fisher.values()) and pool.concepts[-1].fisher
    # concept 2 started from concept 1's LoRA and moved on from it
    moved = [float((pool.concepts[1].lora[k] - pool.concepts[0].lora[k]).abs().max()) for k in pool.concepts[0].lora]
    assert max(moved) > 0
    report = "".join(entry["outputs"][by_type["DriftlessRetentionReport"][0]]["text"])
    assert "| sks cat | 1 |" in report and "| zwx cup | 1 |" in report
    (image,) = [i for output in entry["outputs"].values() for i in output.get("images", [])]
    row = np.asarray(Image.open(comfy_server.base / "output" / image["subfolder"] / image["filename"])).astype(int)
    size, gap = 64, 4
    assert row.shape[1] == 3 * size + 2 * gap
    tiles = [row[:, i * (size + gap): i * (size + gap) + size] for i in range(3)]
    assert not np.array_equal(tiles[0], tiles[1])  # concept 1 sampled before and after concept 2 differ



def test_regularizer_comparison_twin_runs_through_prompt(comfy_server, repo):
    """Via POST /prompt, the tiny twin trains five LoRAs (plain and each regularizer) and writes two stitched rows: the subject
    prompt per method, and the prior prompt for the base model and per method; then a metrics and a drift report
    per method, which tell the methods apart."""
    import numpy as np
    from PIL import Image

    from driftless.headless.demo_backbones import write_demo_backbones
    from driftless.headless.demo_photos import write_demo_photos

    write_demo_photos(comfy_server.base / "input")
    write_demo_backbones(comfy_server.base / "models")
    ui = workflow.load_workflow_file(repo / "example_workflows" / "tiny" / "regularizer_comparison_tiny.json")
    prompt = workflow.to_api_format(ui, comfy_server.get("/object_info"))
    trainers = [n for n in prompt.values() if n["class_type"] == "DriftlessTrainLoRA"]
    assert len(trainers) == 5 and sum("regularizer" in n["inputs"] for n in trainers) == 4
    entry = comfy_server.wait(comfy_server.queue(prompt), timeout=900)
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"][-1][1].get("exception_message")
    outputs = entry["outputs"]
    saved = [comfy_server.base / "output" / e.get("subfolder", "") / e["filename"] for ui in outputs.values()
             for entries in ui.values() for e in (entries if isinstance(entries, list) else [])
             if isinstance(e, dict) and "filename" in e and e.get("type", "output") == "output"]
    rows = {f.name.split("_")[0]: np.asarray(Image.open(f)).astype(int) for f in saved if f.suffix == ".png"}
    assert set(rows) == {"subject", "prior"}
    methods = ["plain_LoRA", "parameter_anchor", "DCO", "APT", "prior_preservation"]
    reports = {(f.parent.name, f.name.rsplit("_", 2)[0]): json.loads(f.read_text()) for f in saved if f.suffix == ".json"}
    assert sorted(reports) == sorted((kind, m) for kind in ("metrics", "drift") for m in methods)
    for method in methods:
        assert set(reports["metrics", method]["metrics"]) == {"clip_t", "clip_i", "dino"}
        assert reports["drift", method]["counts"] == {"pairs": 1}
    dino = {m: reports["metrics", m]["metrics"]["dino"]["mean"] for m in methods}
    assert len(set(dino.values())) == len(methods)  # one table row per method, and the rows differ
    tables = [ui["text"][0] for ui in outputs.values() if "text" in ui and "Personalization metrics" in ui["text"][0]]
    assert len(tables) == 5 and all(f"driftless_demo_compare/metrics/{m}_" in "".join(tables) for m in methods)
    size, gap = 64, 4
    assert rows["subject"].shape[1] == 5 * size + 4 * gap and rows["prior"].shape[1] == 6 * size + 5 * gap
    tiles = {name: [row[:, i * (size + gap): i * (size + gap) + size] for i in range(row.shape[1] // size)]
             for name, row in rows.items()}
    assert not np.array_equal(tiles["prior"][0], tiles["prior"][1])  # plain LoRA drifted from the base model
    for i in (2, 3, 4):  # DCO, APT and prior preservation train differently from plain LoRA
        assert not np.array_equal(tiles["subject"][0], tiles["subject"][i])

def test_guidance_grid_twin_runs_through_prompt(comfy_server, repo):
    """Via POST /prompt, the guidance grid's tiny twin: train, then the same seed at s = 0, 0.25, 0.5, 1."""
    import numpy as np
    from PIL import Image

    from driftless.headless.demo_photos import write_demo_photos

    write_demo_photos(comfy_server.base / "input")
    ui = workflow.load_workflow_file(repo / "example_workflows" / "tiny" / "guidance_grid_tiny.json")
    prompt = workflow.to_api_format(ui, comfy_server.get("/object_info"))
    strengths = sorted(n["inputs"]["weak_strength"] for n in prompt.values() if n["class_type"] == "DriftlessPersonalizationGuider")
    assert strengths == [0.0, 0.25, 0.5, 1.0]
    entry = comfy_server.wait(comfy_server.queue(prompt), timeout=600)
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"][-1][1].get("exception_message")
    images = [i for output in entry["outputs"].values() for i in output.get("images", [])]
    assert len(images) == 4
    pixels = [np.asarray(Image.open(comfy_server.base / "output" / i["subfolder"] / i["filename"])) for i in images]
    assert not np.array_equal(pixels[0], pixels[3])  # s changes the sample


def test_interrupt_ends_a_long_run(comfy_server):
    prompt = {
        "m": {"class_type": "DriftlessTinyModel", "inputs": {"architecture": "sd15-tiny", "seed": 0}},
        "p": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["m", 1], "text": "a cat"}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["m", 1], "text": ""}},
        "l": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "k": {"class_type": "KSampler", "inputs": {
            "model": ["m", 0], "positive": ["p", 0], "negative": ["n", 0], "latent_image": ["l", 0], "seed": 1,
            "steps": 10000, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "s": {"class_type": "PreviewAny", "inputs": {"source": ["k", 0]}},
    }
    prompt_id = comfy_server.queue(prompt)
    time.sleep(3.0)
    start = time.time()
    status, _ = comfy_server.post("/interrupt", {})
    assert status == 200
    entry = comfy_server.wait(prompt_id, timeout=120)
    events = [event for event, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in events, events
    assert time.time() - start < 30
    interrupted = dict(entry["status"]["messages"])["execution_interrupted"]
    assert interrupted["node_type"] == "KSampler"


def test_examples_are_listed_as_templates_and_convert_as_in_process(comfy_server, repo):
    """/workflow_templates lists the pack's examples, and they convert against the live /object_info
    (the comfy tier validates the same conversions with placeholder files)."""
    templates = comfy_server.get("/workflow_templates")
    examples = sorted(p.stem for p in (repo / "example_workflows").glob("*.json"))
    assert sorted(templates["driftless"]) == examples and "regularizer_comparison" in examples
    live = comfy_server.get("/object_info")
    for name in templates["driftless"]:
        ui = workflow.load_workflow_file(repo / "example_workflows" / f"{name}.json")
        prompt = workflow.to_api_format(ui, live)
        types = {n["class_type"] for n in prompt.values()}
        assert "DriftlessTrainLoRA" in types
        # each example ends in what it compares: guided samples, the regularizers' rows, or the concepts' retention
        assert types & {"DriftlessPersonalizationGuider", "DriftlessPriorPreservation", "DriftlessRetentionReport"}
        if name in ("personalize_and_guide", "regularizer_comparison"):  # ... and measures it
            assert {"DriftlessPersonalizationMetrics", "DriftlessDriftMetrics"} <= types
    from driftless.nodes import all_nodes

    assert {k for k in live if k.startswith("Driftless")} == {n.GET_SCHEMA().node_id for n in all_nodes()}
