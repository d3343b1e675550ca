"""`python -m driftless.headless run FILE.json | demo`: the command-line runner behind ./driftless.

Exit codes: 0 success, 1 a node failed, 2 the workflow is invalid (bad JSON, unknown node, failed
validation) or ComfyUI is missing, 130 interrupted.
"""

import argparse
import json
import logging
import pathlib
import sys

from . import host, runner, workflow

DEMO_WORKFLOW = host.PACK_DIR / "example_workflows" / "personalize_shapes.json"  # the pretrained shapes model
TINY_DEMO_WORKFLOW = host.PACK_DIR / "example_workflows" / "tiny" / "personalize_and_guide_tiny.json"
DEFAULT_BASE = host.PACK_DIR / ".driftless" / "comfy_base"
DEFAULT_OUTPUT = host.PACK_DIR / "output"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="driftless", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "execute a workflow file"), ("demo", "run the demo workflow")):
        p = sub.add_parser(name, help=help_text)
        if name == "run":
            p.add_argument("workflow", type=pathlib.Path, help="API-format or UI-format workflow JSON")
            p.add_argument("--save-api", type=pathlib.Path, help="also write the API-format prompt here (for POST /prompt)")
            p.add_argument("--dry-run", action="store_true", help="convert and validate only; run nothing")
        else:
            p.add_argument("--tiny", action="store_true",
                           help=f"run {TINY_DEMO_WORKFLOW.relative_to(host.PACK_DIR)} on the random tiny model instead "
                                "(a minute, no pretraining; its pictures are noise)")
        p.add_argument(
            "--base-directory",
            type=pathlib.Path,
            default=DEFAULT_BASE,
            help="ComfyUI base directory (models/, input/, output/, user/); default %(default)s",
        )
        p.add_argument(
            "--output-directory", type=pathlib.Path, default=DEFAULT_OUTPUT, help="where outputs go; default %(default)s"
        )
        p.add_argument(
            "--extra-model-paths-config",
            type=pathlib.Path,
            action="append",
            default=[],
            help="a ComfyUI extra_model_paths.yaml naming your model folders (repeatable)",
        )
        p.add_argument("--gpu", action="store_true", help="use CUDA even where CPU mode would be picked")
        p.add_argument("--verbose", action="store_true", help="ComfyUI's own log at INFO level")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    path = args.workflow if args.command == "run" else TINY_DEMO_WORKFLOW if args.tiny else DEMO_WORKFLOW
    try:
        data = workflow.load_workflow_file(path)
        comfy = host.boot(args.base_directory, cpu=False if args.gpu else None)
    except (workflow.WorkflowError, host.ComfyUINotFound, host.PackLoadError) as e:
        print(f"[runner] error: {e}", file=sys.stderr)
        return 2
    import folder_paths
    from utils.extra_config import load_extra_path_config

    if args.output_directory:  # an explicit empty value keeps BASE/output
        args.output_directory.mkdir(parents=True, exist_ok=True)
        folder_paths.set_output_directory(str(args.output_directory.resolve()))
    for config in args.extra_model_paths_config:
        load_extra_path_config(str(config))
    for message in runner.write_demo_assets(data):
        print(message)
    print(f"[runner] ComfyUI {comfy.version} at {comfy.root} (device: {_device()})")
    print(f"[runner] workflow {path} ({'UI' if workflow.is_ui_format(data) else 'API'} format)")
    try:
        prompt = workflow.to_api_format(data, comfy.object_info(), source=str(path))
    except workflow.WorkflowError as e:
        print(f"[runner] error: {e}", file=sys.stderr)
        return 2
    if getattr(args, "save_api", None):
        args.save_api.write_text(json.dumps(prompt, indent=2) + "\n")
        print(f"[runner] API-format prompt written to {args.save_api}")
    output_nodes, problems = runner.validate(prompt, "validate")
    if problems:
        print(f"[runner] error: {path} does not validate:\n{runner.format_validation_errors(problems, prompt)}", file=sys.stderr)
        return 2
    if getattr(args, "dry_run", False):
        print(f"[runner] {path} is valid ({len(prompt)} nodes, outputs {', '.join(output_nodes)}); nothing run (--dry-run)")
        return 0
    result = runner.execute(prompt, output_nodes)
    if result.interrupted:
        print("[runner] interrupted", file=sys.stderr)
        return 130
    if not result.success:
        err = result.error or {}
        print(
            f"[runner] error in node #{err.get('node_id')} {err.get('node_type')}: "
            f"{err.get('exception_type')}: {err.get('exception_message')}\n{''.join(err.get('traceback', []))}",
            file=sys.stderr,
        )
        return 1
    print(f"[runner] success in {result.seconds:.1f} s; outputs in {folder_paths.get_output_directory()}")
    for f in runner.output_files(result.outputs, kinds=("output",)):  # previews (temp) are shown as text below
        print(f"[runner]   wrote {f}")
    for node_id, ui in result.outputs.items():
        for text in ui.get("text", []) if isinstance(ui.get("text"), list) else []:
            print(f"[runner]   {runner.node_label(prompt, node_id)}: {text}")
    return 0


def _device() -> str:
    import comfy.model_management

    return str(comfy.model_management.get_torch_device())


if __name__ == "__main__":
    sys.exit(main())
