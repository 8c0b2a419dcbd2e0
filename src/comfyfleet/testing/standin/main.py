"""A stand-in for ComfyUI's ``main.py``: the same startup and the HTTP API the provisioner checks.

The real ComfyUI cannot be installed in CI (it is not on PyPI, and it needs torch), so tests
and ``comfyfleet demo`` run this instead. It follows ComfyUI's documented behaviour
(reference/provisioning_anchors.md §3): custom nodes are imported from
``custom_nodes/*/__init__.py`` (``NODE_CLASS_MAPPINGS``) before the server starts, failures are
logged with ``(IMPORT FAILED)``; ``GET /system_stats``, ``GET /models``, ``GET /models/{folder}``
(404 for an unknown key; recursive; extension filter; legacy directories), ``GET /object_info``
and ``GET /object_info/{Class}`` (``{}`` when missing). Standard library only, so it runs in any
venv.

``STANDIN_DEVICES`` (``cuda`` default, ``cpu``, ``none``) says which devices ``/system_stats``
lists, since test machines have no GPU; ``--cpu`` always lists only the CPU, as ComfyUI does.
"""

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import folder_paths
import nodes

VERSION = "0.0.0-standin"


def parse_args(argv):
    parser = argparse.ArgumentParser(description="stand-in ComfyUI")
    parser.add_argument("--listen", type=str, default="127.0.0.1", nargs="?", const="0.0.0.0,::")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--disable-auto-launch", action="store_true")
    parser.add_argument("--enable-cors-header", type=str, default=None, nargs="?", const="*")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"[stand-in] ignoring arguments ComfyUI would use: {' '.join(unknown)}", flush=True)
    return args


def load_custom_nodes():
    """Import every custom node and merge its classes (init_external_custom_nodes)."""
    node_paths = folder_paths.get_folder_paths("custom_nodes")
    times = []
    for node_dir in node_paths:
        if not os.path.isdir(node_dir):
            continue
        for name in sorted(os.listdir(node_dir)):
            path = os.path.join(node_dir, name)
            if name.startswith(".") or name == "__pycache__" or name.endswith(".disabled"):
                continue
            if os.path.isfile(path) and not name.endswith(".py"):
                continue
            started = time.perf_counter()
            ok = load_custom_node(path)
            times.append((time.perf_counter() - started, path, ok))
    if times:
        print("\nImport times for custom nodes:", flush=True)
        for seconds, path, ok in sorted(times):
            status = "" if ok else " (IMPORT FAILED)"
            print(f"{seconds:6.1f} seconds{status}: {path}", flush=True)
        print(flush=True)


def load_custom_node(path):
    if os.path.isfile(path):
        module_name = os.path.splitext(os.path.basename(path))[0]
        init = path
    else:
        module_name = os.path.basename(path)
        init = os.path.join(path, "__init__.py")
        if not os.path.isfile(init):
            print(
                f"Skip {path} module for custom nodes due to the lack of __init__.py.", flush=True
            )
            return False
    try:
        spec = importlib.util.spec_from_file_location(
            module_name, init, submodule_search_locations=None if os.path.isfile(path) else [path]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
        if mappings is None:
            print(
                f"Skip {path} module for custom nodes due to the lack of NODE_CLASS_MAPPINGS.",
                flush=True,
            )
            return False
        for class_name, cls in mappings.items():
            nodes.NODE_CLASS_MAPPINGS.setdefault(class_name, cls)
        return True
    except Exception:
        print(traceback.format_exc(), flush=True)
        print(f"Cannot import {path} module for custom nodes:", flush=True)
        return False


def node_info(class_name):
    cls = nodes.NODE_CLASS_MAPPINGS[class_name]
    input_types = cls.INPUT_TYPES() if hasattr(cls, "INPUT_TYPES") else {"required": {}}
    return {
        "input": input_types,
        "input_order": {k: list(v) for k, v in input_types.items()},
        "output": list(getattr(cls, "RETURN_TYPES", ())),
        "name": class_name,
        "display_name": class_name,
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        "python_module": getattr(cls, "__module__", "nodes"),
    }


def devices(args):
    which = "cpu" if args.cpu else os.environ.get("STANDIN_DEVICES", "cuda")
    if which == "none":
        return []
    if which == "cpu":
        return [
            {
                "name": "cpu",
                "type": "cpu",
                "index": None,
                "vram_total": 0,
                "vram_free": 0,
                "torch_vram_total": 0,
                "torch_vram_free": 0,
            }
        ]
    gib = 1024**3
    return [
        {
            "name": "cuda:0 Stand-in GPU : cudaMallocAsync",
            "type": "cuda",
            "index": 0,
            "vram_total": 24 * gib,
            "vram_free": 23 * gib,
            "torch_vram_total": 0,
            "torch_vram_free": 0,
        }
    ]


def make_handler(args):
    class Handler(BaseHTTPRequestHandler):
        server_version = "ComfyUI-standin"

        def log_message(self, fmt, *a):  # quiet, like ComfyUI's aiohttp access log
            pass

        def send_json(self, status, doc):
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = unquote(urlsplit(self.path).path)
            if path.startswith("/api/"):
                path = path[4:]
            parts = [p for p in path.split("/") if p]
            if parts == ["system_stats"]:
                return self.send_json(
                    200,
                    {
                        "system": {
                            "os": os.name,
                            "ram_total": 0,
                            "ram_free": 0,
                            "comfyui_version": VERSION,
                            "python_version": sys.version,
                            "pytorch_version": "standin",
                            "embedded_python": False,
                            "argv": sys.argv,
                        },
                        "devices": devices(args),
                    },
                )
            if parts == ["models"]:
                return self.send_json(200, sorted(folder_paths.folder_names_and_paths))
            if len(parts) == 2 and parts[0] == "models":
                # server.py: an unknown key (aliases included) is a 404, not an empty list
                if parts[1] not in folder_paths.folder_names_and_paths:
                    return self.send_json(404, {"error": f"unknown folder {parts[1]}"})
                return self.send_json(200, folder_paths.get_filename_list(parts[1]))
            if parts == ["object_info"]:
                return self.send_json(200, {n: node_info(n) for n in nodes.NODE_CLASS_MAPPINGS})
            if len(parts) == 2 and parts[0] == "object_info":
                if parts[1] not in nodes.NODE_CLASS_MAPPINGS:
                    return self.send_json(200, {})
                return self.send_json(200, {parts[1]: node_info(parts[1])})
            if parts == [] or parts == ["queue"]:
                return self.send_json(200, {"queue_running": [], "queue_pending": []})
            return self.send_json(404, {"error": "not found"})

    return Handler


def main():
    args = parse_args(sys.argv[1:])
    print(f"Stand-in ComfyUI {VERSION} (Python {platform.python_version()})", flush=True)
    if args.cpu:
        print("Set device to CPU (--cpu)", flush=True)
    load_custom_nodes()
    host = args.listen.split(",")[0]
    server = ThreadingHTTPServer((host, args.port), make_handler(args))
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print("Starting server\n", flush=True)
    print(f"To see the GUI go to: http://{shown}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nStopped server", flush=True)


if __name__ == "__main__":
    main()
