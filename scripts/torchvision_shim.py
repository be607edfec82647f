"""Install (or remove) the torchvision op-schema shim for CPU-only test machines.

Why: vLLM and transformers' Qwen2-VL processors import torchvision. The only torchvision 0.28.0
wheel the registries offer is a CUDA build; its C extension does not load next to torch 2.13.0+cpu,
and its Python side then fails at import with ``operator torchvision::nms does not exist`` (it
registers fake kernels for ``nms`` / ``qnms`` unconditionally). Defining those two op schemas before
torchvision is first imported lets it import; torchvision's real ops stay unavailable (the vLLM
paths we use never call them). See ../shared/STACK.md.

The schemas must exist in *every* process that imports torchvision (Ray workers, vLLM's
registry-inspection subprocess, the engine core), so a conftest is not enough: this script drops a
``.pth`` file into site-packages. The .pth only installs a tiny import hook; torch itself is imported
lazily, the first time something imports torchvision, so other processes pay nothing.

Usage (scripts/setup.sh runs `install` for the cpu/test profiles; .ci/run should too):
    .venv/bin/python scripts/torchvision_shim.py install     # idempotent
    .venv/bin/python scripts/torchvision_shim.py uninstall
    .venv/bin/python scripts/torchvision_shim.py check        # exit 1 if `from vllm import LLM` fails

Never install it on a GPU node with a working torchvision: the hook checks `torch.version.cuda` and
does nothing on CUDA torch, but there is no reason to have it there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

MODULE_NAME = "_groundv_torchvision_shim"
PTH_NAME = "groundv_torchvision_shim.pth"

# The hook module written next to the .pth. Kept dependency-free: it runs at interpreter start.
HOOK_SOURCE = '''"""groundv: define torchvision's nms/qnms op schemas before torchvision imports (CPU torch).

Installed by scripts/torchvision_shim.py; see that file for why.
"""
import importlib.abc
import sys

_LIBS = []  # torch.library.Library objects must stay alive or their definitions are dropped


def _define():
    import torch

    if torch.version.cuda is not None:  # real CUDA torch: torchvision's own ops load fine
        return
    try:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBS.append(lib)
    except RuntimeError:  # already defined (another copy of the hook, or a working torchvision)
        pass


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        _define()
        return None  # let the normal finders import torchvision


if "torchvision" not in sys.modules and not any(isinstance(f, _Hook) for f in sys.meta_path):
    sys.meta_path.insert(0, _Hook())
'''


def site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def install() -> None:
    sp = site_packages()
    with open(os.path.join(sp, MODULE_NAME + ".py"), "w") as fh:
        fh.write(HOOK_SOURCE)
    with open(os.path.join(sp, PTH_NAME), "w") as fh:
        fh.write(f"import {MODULE_NAME}\n")
    print(f"torchvision shim installed in {sp}")


def uninstall() -> None:
    sp = site_packages()
    for name in (MODULE_NAME + ".py", PTH_NAME):
        path = os.path.join(sp, name)
        if os.path.exists(path):
            os.unlink(path)
    print(f"torchvision shim removed from {sp}")


def check() -> int:
    """A fresh interpreter must import vLLM and torchvision (what the engine processes do)."""
    code = "import torchvision, vllm.entrypoints.chat_utils; from vllm import LLM; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return 1
    print("torchvision shim works: vllm imports")
    return 0


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "install"
    if cmd == "install":
        install()
        return 0
    if cmd == "uninstall":
        uninstall()
        return 0
    if cmd == "check":
        return check()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
