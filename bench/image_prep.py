"""Image preparation and duplicate requests for a vision teacher: the old ways and the new one, side by side.

    python bench/image_prep.py [--records 40] [--images 200]

1. CPU-ms to prepare one 640x480 image record (3 or 4 units, ~3.5 on average) up to the engine's
   input, with the real components in the counts each path runs them:
     old: decode -> fit without grid (no resize) -> JPEG q90 re-encode; per unit: base64 data URL,
          vLLM's MediaConnector decode, vLLM's MultiModalHasher over the pixels, the real
          Qwen2VLImageProcessor (which resizes 640x480 -> 644x476 again).
     mm_stage (issue 16, first step): decode -> ONE resize onto the 28 px grid -> ONE encode;
          base64 once per image (shared image part); per unit: MediaConnector decode (Ray's
          multimodal stage parses each row); no hashing (stable uuid); the processor once per
          image (vLLM's processor cache, keyed by the uuid), and it finds nothing to resize.
     new: the same stream; the preprocess decodes the teacher image ONCE per image and hands it,
          with its uuid, to the engine stage (Ray's multimodal stage off); no data URL, no parse.
   Also counted: image resizes per image before the engine (stream + processor), decodes of the
   teacher image after the stream, and apart from the measure, the per-unit cost of carrying the
   decoded image across one Ray stage boundary (a pickle round trip).
2. Duplicate teacher requests in a sample build (vision teacher, Qwen2.5-VL settings): request
   keys of every unit without de-duplication vs what the stream sends with it (the real
   split_for_stream -> ReadImages -> DecodeAndFanOut -> collapse_requests, no Ray).
Writes bench/results/image_prep.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One compute thread: CPU time is counted per process, and idle OpenMP workers of the HF processor
# spin after each call, which charged their CPU to whatever component was timed next.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

QWEN25 = os.path.join(ROOT, "configs", "teachers", "qwen2_5_vl_7b.yaml")
MAX_PIXELS, MIN_PIXELS, FACTOR = 1003520, 3136, 28


def photo_jpeg(seed: int, w: int = 640, h: int = 480) -> bytes:
    """A photo-like 640x480 JPEG (smooth gradients + noise: compresses like a real photo)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) * 255 // (w + h))], -1)
    img = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=92)
    return buf.getvalue()


class Engine:
    """The per-unit work vLLM and Ray's multimodal stage do on CPU before the model runs, with a
    CPU-time account per component."""

    def __init__(self) -> None:
        from transformers import Qwen2VLImageProcessor
        from vllm.multimodal.hasher import MultiModalHasher
        from vllm.multimodal.media.connector import MediaConnector

        self.connector = MediaConnector()
        self.hasher = MultiModalHasher
        self.proc = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
        self.resizes = self.calls = 0
        self.transport = 0.0
        self.decodes = 0
        self.cpu: dict[str, float] = {}

    def timed(self, name: str, fn: Any, *args: Any) -> Any:
        t0 = time.process_time()
        out = fn(*args)
        self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - t0
        return out

    def parse(self, url: str) -> Any:
        self.decodes += 1
        return self.timed("engine_parse", self.connector.fetch_image, url)

    def hash(self, img: Any) -> str:
        # vLLM's default algorithm, over the item as the engine gets it
        return self.timed("engine_hash", lambda: self.hasher.hash_kwargs("blake3", model_id="bench", image=img))

    def carry(self, img: Any) -> None:
        """What moving the unit row's decoded image across ONE Ray stage boundary costs: Ray pickles
        each row's `__data` dict on its own (object column), so every unit pays for its copy.
        Counted apart (`row_transport`), not in the issue's measure."""
        import pickle

        t0 = time.process_time()
        pickle.loads(pickle.dumps(img, protocol=5))
        self.transport += time.process_time() - t0

    def process(self, img: Any) -> Any:
        img = getattr(img, "media", img)  # vLLM's MediaWithBytes wraps the PIL image
        out = self.timed("hf_processor", lambda: self.proc(images=[img], return_tensors="np"))
        _, gh, gw = out["image_grid_thw"][0]
        size = img.size if hasattr(img, "mode") else (img.shape[1], img.shape[0])  # PIL or (H, W, 3) array
        self.resizes += (gw * 14, gh * 14) != size
        self.calls += 1
        return out


def prepare_old(data: bytes, size: tuple[int, int], units: int, eng: Engine) -> int:
    from pipelines.build.stages.images import decode_image
    from teachers.vllm_rows import image_data_url

    jpeg, tw, th, err, _ = eng.timed("stream_decode_resize_encode", decode_image, data, *size, 10**9, True,
                                     MAX_PIXELS)  # factor 1: the old fit
    assert err is None
    for _ in range(units):
        img = eng.parse(eng.timed("data_url", image_data_url, jpeg))
        eng.carry(img)
        eng.hash(img)
        eng.process(img)
    return int((tw, th) != size)


def prepare_mm_stage(data: bytes, size: tuple[int, int], units: int, eng: Engine) -> int:
    """Issue 16, first step (main until 2026-11-30): one resize + one encode in the stream, one
    base64 data URL per image, then Ray's multimodal stage decodes the URL again on EVERY unit row."""
    from pipelines.build.stages.images import decode_image
    from teachers.vllm_rows import image_data_url, image_uuid

    jpeg, tw, th, err, _ = eng.timed("stream_decode_resize_encode", decode_image, data, *size, 10**9, True,
                                     MAX_PIXELS, FACTOR, MIN_PIXELS)
    assert err is None
    urls: dict[str, str] = {}  # the former per-worker image-part cache
    processed: set[str] = set()
    for _ in range(units):
        uid = eng.timed("data_url", lambda: image_uuid(jpeg))
        url = urls.get(uid) or urls.setdefault(uid, eng.timed("data_url", image_data_url, jpeg))
        img = eng.parse(url)
        eng.carry(img)
        if uid not in processed:  # vLLM's processor cache: hit for the later units
            processed.add(uid)
            eng.process(img)
    return int((tw, th) != size)


def prepare_new(data: bytes, size: tuple[int, int], units: int, eng: Engine) -> int:
    """Now: the same stream; the preprocess decodes the teacher image ONCE per image (shared by its
    units, teachers/vllm_rows.IMAGES) and hands it to the engine stage with its uuid; Ray's
    multimodal stage is off, nothing parses the image again."""
    from pipelines.build.stages.images import decode_image
    from teachers.vllm_rows import _ImageCache

    images = _ImageCache()
    jpeg, tw, th, err, _ = eng.timed("stream_decode_resize_encode", decode_image, data, *size, 10**9, True,
                                     MAX_PIXELS, FACTOR, MIN_PIXELS)
    assert err is None
    processed: set[str] = set()
    for _ in range(units):
        uid, img = eng.timed("teacher_decode_once", images.get, jpeg)
        eng.carry(img)
        if uid not in processed:
            processed.add(uid)
            eng.process(img)
    eng.decodes += images.misses
    return int((tw, th) != size)


PATHS = (("old", prepare_old), ("mm_stage", prepare_mm_stage), ("new", prepare_new))


def bench_prepare(records: int, size: tuple[int, int]) -> dict[str, Any]:
    images = [photo_jpeg(i, *size) for i in range(records)]
    units = [3 + (i % 2) for i in range(records)]  # 3.5 units per record on average
    out: dict[str, Any] = {"size": f"{size[0]}x{size[1]}", "records": records,
                           "units_per_record": sum(units) / records}
    engines = {name: Engine() for name, _ in PATHS}  # one CPU account per path
    for name, fn in PATHS:
        fn(images[0], size, 1, engines[name])  # warm caches / imports
        engines[name] = Engine()
    stream_resizes = dict.fromkeys(engines, 0)
    # Paths interleaved record by record (the shared machine's load drifts: each path sees the same),
    # in a rotating order (the path after another finds that record's bytes warm in the cache).
    for i, (data, n) in enumerate(zip(images, units, strict=True)):
        for name, fn in PATHS[i % len(PATHS):] + PATHS[:i % len(PATHS)]:
            stream_resizes[name] += fn(data, size, n, engines[name])
    for name, eng in engines.items():
        per = {k: round(1000 * v / records, 2) for k, v in eng.cpu.items()}
        total = sum(eng.cpu.values())
        out[name] = {
            "cpu_ms_per_record": round(1000 * total / records, 2),
            # the measure: everything but the HF processor's own normalise/patchify work
            "cpu_ms_per_record_without_hf_processor": round(
                1000 * (total - eng.cpu.get("hf_processor", 0.0)) / records, 2),
            "cpu_ms_by_component": per,
            # resizes one request's image goes through: the stream's + the engine processor's
            "resizes_per_image": round(stream_resizes[name] / records + eng.resizes / max(1, eng.calls), 2),
            # decodes of the teacher image after the stream (MediaConnector per unit, or ours once)
            "teacher_image_decodes_per_record": round(eng.decodes / records, 2),
            "row_transport_ms_per_record_per_boundary": round(1000 * eng.transport / records, 2),
        }
    out["ratio_new_over_old"] = round(out["new"]["cpu_ms_per_record"] / out["old"]["cpu_ms_per_record"], 3)
    out["ratio_new_over_mm_stage_without_hf_processor"] = round(
        out["new"]["cpu_ms_per_record_without_hf_processor"]
        / out["mm_stage"]["cpu_ms_per_record_without_hf_processor"], 3)
    return out


def bench_duplicates(n_images: int) -> dict[str, Any]:
    from pipelines.build.plan import split_for_stream
    from pipelines.build.stages.images import DecodeAndFanOut, ReadImages
    from pipelines.build_groundv import BuildContext, plan
    from pipelines.config import grid_factor, load_config
    from teachers.requests import duplicate_count

    tmp = tempfile.mkdtemp(prefix="groundv-dups-")
    cfg = load_config([QWEN25], [f"data.sample.dir={os.path.join(tmp, 'sample')}",
                                 f"data.sample.num_images={n_images}", f"output.uri={os.path.join(tmp, 'out')}"])
    ctx = BuildContext(cfg, validate_teacher=False, dry_run=True)
    p = plan(ctx, set(), use_existing=False)[0]
    t = cfg.teacher
    read = ReadImages(ctx.store)
    decode = DecodeAndFanOut(True, t.max_pixels, cfg.stream.max_image_pixels, grid_factor(t), t.min_pixels)
    key_of, collapse = ctx.teacher.request_key_fn(), ctx.teacher.collapse_fn()
    all_keys, sent_keys, units = [], [], 0
    for block in split_for_stream(p.work, cfg.stream.image_batch_size):
        fanned = decode(read(block))
        units += fanned.num_rows
        all_keys += [None if r["unit_error"] else key_of(r) for r in fanned.to_pylist()]
        sent_keys += collapse(fanned).column("request_key").to_pylist()
    requests, dup_before = duplicate_count(all_keys)
    sent, dup_after = duplicate_count(sent_keys)
    return {"sample_images": n_images, "units": units, "requests_without_dedup": requests,
            "duplicates_without_dedup": dup_before, "requests_sent": sent, "duplicates_sent": dup_after,
            "requests_saved": requests - sent}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=40)
    ap.add_argument("--images", type=int, default=200, help="sample images for the duplicate count")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "image_prep.json"))
    args = ap.parse_args(argv)
    res = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "prepare_640x480": bench_prepare(args.records, (640, 480)),
           "prepare_1600x1200": bench_prepare(max(4, args.records // 4), (1600, 1200)),
           "duplicates": bench_duplicates(args.images)}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=2)
    d = res["duplicates"]
    paths = ("old", "mm_stage", "new")
    for key in ("prepare_640x480", "prepare_1600x1200"):
        pr = res[key]
        print(f"{pr['size']} record ({pr['units_per_record']} units), CPU-ms "
              + "  ".join(f"{p} {pr[p]['cpu_ms_per_record']}" for p in paths)
              + "; without the HF processor "
              + "  ".join(f"{p} {pr[p]['cpu_ms_per_record_without_hf_processor']}" for p in paths)
              + f" (new / mm_stage {pr['ratio_new_over_mm_stage_without_hf_processor']})")
        for p in paths:
            print(f"  {p:8s} by component {pr[p]['cpu_ms_by_component']}; resizes/image "
                  f"{pr[p]['resizes_per_image']}, teacher-image decodes/record "
                  f"{pr[p]['teacher_image_decodes_per_record']}, row transport/boundary "
                  f"{pr[p]['row_transport_ms_per_record_per_boundary']} ms")
    print(f"duplicate requests: without de-dup {d['duplicates_without_dedup']} / {d['requests_without_dedup']}, "
          f"sent {d['duplicates_sent']} / {d['requests_sent']} ({d['requests_saved']} saved)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
