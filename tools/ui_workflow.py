"""Build UI-format workflows (what the web UI saves) from a short description and the host's /object_info.

Used to write example_workflows/: widget values are placed in the schema's order (with the UI-only
"control after generate" value after seeds, where the web UI adds that widget), sockets and links are
typed from object_info, and nodes are laid out in columns. The result loads in the web UI and
converts back to API format with the same inputs.
"""

import uuid


class UIWorkflow:
    def __init__(self, object_info: dict):
        self.info = object_info
        self.nodes, self.links = [], []
        self.columns: dict[int, float] = {}

    def node(self, node_type: str, column: int, title: str | None = None, preview_height: int = 0,
             node_width: int = 320, **inputs) -> "NodeRef":
        """A node below the last one in `column`; `preview_height` leaves room under its widgets for an image the
        node shows after a run (a preview, a metrics table), so it does not grow over the node below. Columns are
        360 apart: a node wider than 320 needs the next column(s) free."""
        spec = self.info[node_type]
        node_id = len(self.nodes) + 1
        y = self.columns.get(column, 40.0)
        order = [*spec["input_order"].get("required", []), *spec["input_order"].get("optional", [])]
        all_inputs = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        unknown = set(inputs) - set(all_inputs)
        if unknown:
            raise ValueError(f"{node_type} has no input {', '.join(sorted(unknown))}; its inputs: {', '.join(order)}")
        sockets, widgets = [], []
        for name in order:
            kind, options = all_inputs[name][0], (all_inputs[name][1] if len(all_inputs[name]) > 1 else {})
            value = inputs.get(name)
            is_widget = isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
            if isinstance(value, NodeRef) or not is_widget:
                sockets.append({"name": name, "type": kind if isinstance(kind, str) else "COMBO", "link": None})
                if isinstance(value, NodeRef):
                    self._link(value, node_id, len(sockets) - 1, sockets[-1])
                continue
            widgets.append(value if name in inputs else options.get("default", (kind[0] if isinstance(kind, list) else None)))
            if _has_control_widget(name, kind, options):
                widgets.append("fixed")
            if options.get("image_upload") or options.get("upload") == "image":
                widgets.append("image")
        outputs = [
            {"name": n, "type": t, "links": [], "slot_index": i}
            for i, (n, t) in enumerate(zip(spec["output_name"], spec["output"]))
        ]
        height = 60 + 26 * (len(sockets) + len(widgets) + len(outputs)) + preview_height
        entry = {
            "id": node_id, "type": node_type, "pos": [40 + 360 * column, y], "size": [node_width, height], "flags": {},
            "order": node_id - 1, "mode": 0, "inputs": sockets, "outputs": outputs,
            "properties": {"Node name for S&R": node_type, **_provenance(node_type)}, "widgets_values": widgets,
        }
        if title:
            entry["title"] = title
        self.nodes.append(entry)
        self.columns[column] = y + height + 40
        return NodeRef(self, node_id)

    def align(self, *columns: int) -> None:
        """Start the next node of each of these columns at the same height (a row across them)."""
        y = max(self.columns.get(c, 40.0) for c in columns)
        for c in columns:
            self.columns[c] = y

    def note(self, column: int, text: str, height: int = 220):
        node_id = len(self.nodes) + 1
        y = self.columns.get(column, 40.0)
        self.nodes.append({
            "id": node_id, "type": "MarkdownNote", "pos": [40 + 360 * column, y], "size": [320, height], "flags": {},
            "order": node_id - 1, "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [text],
            "color": "#432", "bgcolor": "#653",
        })
        self.columns[column] = y + height + 40

    def _link(self, source: "NodeRef", target_id: int, target_slot: int, socket: dict):
        link_id = len(self.links) + 1
        out = self.nodes[source.node_id - 1]["outputs"][source.slot]
        out["links"].append(link_id)
        socket["link"] = link_id
        self.links.append([link_id, source.node_id, source.slot, target_id, target_slot, out["type"]])

    def to_json(self) -> dict:
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "driftless/" + "/".join(n["type"] for n in self.nodes))),
            "revision": 0, "last_node_id": len(self.nodes), "last_link_id": len(self.links),
            "nodes": self.nodes, "links": self.links, "groups": [], "config": {},
            # the view on load: the first column clear of the web UI's side bar and tabs
            "extra": {"ds": {"scale": 0.8, "offset": [80, 50]}}, "version": 0.4,
        }


class NodeRef:
    def __init__(self, workflow: UIWorkflow, node_id: int, slot: int = 0):
        self.workflow, self.node_id, self.slot = workflow, node_id, slot

    def out(self, slot: int) -> "NodeRef":
        return NodeRef(self.workflow, self.node_id, slot)


def _has_control_widget(name: str, kind, options: dict) -> bool:
    """Whether the web UI gives this input a "control after generate" widget (whose value follows the input's
    in widgets_values): frontend 1.32 `useIntWidget` adds one to an INT that declares control_after_generate,
    and, when the schema does not say, to an INT named `seed` or `noise_seed`."""
    if kind != "INT":
        return False
    if "control_after_generate" in options:
        return bool(options["control_after_generate"])
    return name in ("seed", "noise_seed")


def _provenance(node_type: str) -> dict:
    if node_type.startswith("Driftless"):
        return {"cnr_id": "driftless", "ver": "0.1.0"}
    return {"cnr_id": "comfy-core", "ver": "0.3.75"}
