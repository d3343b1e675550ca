"""Workflow files: read them, tell UI format from API format, convert UI to API, check node types.

UI format is what the web UI saves (`nodes` + `links`, positional `widgets_values`); API format is
what POST /prompt takes (`{id: {class_type, inputs}}`). The UI->API conversion is comfy-cli's
maintained converter (`comfy_cli.workflow_to_api`), fed with /object_info of the running host.
"""

import json
import pathlib

# frontend-only node types that never reach the executor (they have no Python class)
UI_ONLY_NODE_TYPES = frozenset({"Note", "MarkdownNote", "PrimitiveNode", "Reroute", "GetNode", "SetNode"})
MUTED_OR_BYPASSED = (2, 4)


class WorkflowError(ValueError):
    """A workflow that cannot be run, with a message that says where and why."""


def load_workflow_file(path: str | pathlib.Path) -> dict:
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkflowError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise WorkflowError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise WorkflowError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg} (character {e.pos})") from None
    if not isinstance(data, dict):
        raise WorkflowError(f"{path}: a workflow is a JSON object, found {type(data).__name__}")
    return data


def is_ui_format(workflow: dict) -> bool:
    return isinstance(workflow.get("nodes"), list) and isinstance(workflow.get("links"), list)


def is_api_format(workflow: dict) -> bool:
    return bool(workflow) and all(isinstance(v, dict) and "class_type" in v for v in workflow.values())


def unknown_node_types(workflow: dict, object_info: dict) -> list[tuple[str, str]]:
    """(node id, type) of every node the host does not know, in either format."""
    if is_ui_format(workflow):
        found = [
            (str(n.get("id")), n.get("type"))
            for n in workflow["nodes"]
            if isinstance(n, dict) and n.get("type") not in UI_ONLY_NODE_TYPES
        ]
        subgraph_ids = {sg.get("id") for sg in workflow.get("definitions", {}).get("subgraphs", [])}
        for sg in workflow.get("definitions", {}).get("subgraphs", []):
            found += [(f"{sg.get('id')}:{n.get('id')}", n.get("type")) for n in sg.get("nodes", [])]
        found = [(i, t) for i, t in found if t not in UI_ONLY_NODE_TYPES and t not in subgraph_ids]
    else:
        found = [(str(i), n.get("class_type")) for i, n in workflow.items()]
    return [(i, t) for i, t in found if t not in object_info]


def to_api_format(workflow: dict, object_info: dict, source: str = "workflow") -> dict:
    """The API-format prompt for `workflow`; fails before execution on anything the host lacks."""
    if not (is_ui_format(workflow) or is_api_format(workflow)):
        raise WorkflowError(
            f"{source}: neither UI format (top-level 'nodes' and 'links' lists) "
            "nor API format (every value an object with 'class_type')"
        )
    unknown = unknown_node_types(workflow, object_info)
    if unknown:
        listed = ", ".join(f"node {i} ({t!r})" for i, t in unknown)
        raise WorkflowError(
            f"{source}: unknown node type(s): {listed}. Install the custom node pack that provides them, "
            "or check the spelling; ComfyUI lists what it knows at /object_info."
        )
    if is_api_format(workflow):
        return workflow
    from comfy_cli.workflow_to_api import WorkflowConversionError, convert_ui_to_api

    try:
        prompt = convert_ui_to_api(workflow, object_info)
    except WorkflowConversionError as e:
        raise WorkflowError(f"{source}: cannot convert the UI-format workflow: {e}") from None
    active = [
        str(n.get("id"))
        for n in workflow["nodes"]
        if n.get("type") not in UI_ONLY_NODE_TYPES and n.get("mode", 0) not in MUTED_OR_BYPASSED
    ]
    dropped = [i for i in active if i not in prompt and not workflow.get("definitions")]
    if dropped:
        raise WorkflowError(f"{source}: the converter could not translate node(s) {', '.join(dropped)} (see the log)")
    return prompt
