"""`python -m benchmarks NAME ...`: one benchmark (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import benchmarks as bench


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=bench.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    rt = sub.add_parser("runtime", help="request queue vs one-at-a-time, no Ray")
    rt.add_argument("--model", type=Path, required=True)
    rt.add_argument("--seconds", type=float, default=5.0)
    rt.add_argument("--providers", default="cpu", help="comma-separated, e.g. cuda,cpu")
    pl = sub.add_parser("pipeline", help="the whole job vs a naive loop and Ray Data")
    pl.add_argument("--data-root", type=Path, required=True)
    pl.add_argument("--model", type=Path, required=True)
    pl.add_argument("--images", type=int, default=240)
    pl.add_argument("--quick", action="store_true", help="Ray Data grid at batch 4 only")
    pl.add_argument("--repeat", type=int, default=3,
                    help="rayinfer runs, each between two measurements of the limits; medians are reported")
    ac = sub.add_parser("accel", help="simulated devices: Ray Data vs rayinfer")
    ac.add_argument("--data-root", type=Path, required=True)
    ac.add_argument("--images", type=int, default=5000,
                    help="default: the size of COCO val2017, so actor start-up is amortised as in a real job")
    ac.add_argument("--devices", type=int, default=2)
    ac.add_argument("--latency-ms", type=float, default=20.0)
    ac.add_argument("--capacity", type=int, default=4)
    ac.add_argument("--output-model", type=Path,
                    default=Path(os.environ.get("RAYINFER_SHARED", "../shared")) / "models" / "yolov8n_int8.onnx",
                    help="its output for one image is what the devices return (default: YOLOv8n in $RAYINFER_SHARED)")
    ac.add_argument("--raydata-batches", default="1,4,16,64", help="Ray Data's batch sizes to try (empty: rayinfer alone, as where Ray Data is not installed)")
    ac.add_argument("--device", choices=("streams", "gpu"), default="streams",
                    help="streams: stream-shaped devices, Ray Data against rayinfer; gpu: GPU-shaped devices "
                         "(--fixed-ms + --per-item-ms per sample per request), --batch auto against --batch 1")
    ac.add_argument("--fixed-ms", type=float, default=4.0, help="(gpu) each request's fixed time")
    ac.add_argument("--per-item-ms", type=float, default=0.25, help="(gpu) each sample's share of a request")
    ac.add_argument("--repeat", type=int, default=2, help="(gpu) COCO runs per setting, alternating; medians")
    st = sub.add_parser("storage", help="the job from a folder, tar shards, S3 (moto), S3 with added latency")
    st.add_argument("--data-root", type=Path, required=True)
    st.add_argument("--images", type=int, default=1000)
    st.add_argument("--devices", type=int, default=2)
    st.add_argument("--latency-ms", type=float, default=20.0)
    st.add_argument("--capacity", type=int, default=4)
    st.add_argument("--delay-ms", type=float, default=50.0, help="added to every request in the s3_delayed mode")
    st.add_argument("--samples-per-shard", type=int, default=64)
    sc = sub.add_parser("scale", help="1..N simulated devices, trivial host work")
    sc.add_argument("--max-devices", type=int, default=64)
    sc.add_argument("--latency-ms", type=float, default=200.0)
    sc.add_argument("--capacity", type=int, help="streams per device (default 4), or engines (gpu: default 1)")
    sc.add_argument("--seconds", type=float, default=12.0, help="target run length per device count")
    sc.add_argument("--memory-sizes", default="1000,20000")
    sc.add_argument("--device", choices=("streams", "gpu"), default="streams",
                    help="stream-shaped devices, or GPU-shaped (--latency-ms fixed + --per-item-ms per sample)")
    sc.add_argument("--per-item-ms", type=float, default=0.25, help="(gpu) each sample's share of a request")
    from benchmarks.runtimes import BENCH_SETS

    rn = sub.add_parser("runtimes", help="the whole job with onnxruntime, openvino and auto, back to back")
    rn.add_argument("task", choices=sorted(BENCH_SETS))
    rn.add_argument("--data-root", type=Path, required=True)
    rn.add_argument("--model", type=Path, required=True)
    rn.add_argument("--images", type=int, default=500)
    rn.add_argument("--repeat", type=int, default=2)
    me = sub.add_parser("memory", help="peak RSS of the whole COCO job at two dataset sizes")
    me.add_argument("--data-root", type=Path, required=True)
    me.add_argument("--model", type=Path, required=True)
    me.add_argument("--sizes", default="1000,5000", help="comma-separated image counts")
    rp = sub.add_parser("report", help="the report's writing time, memory, size and render time")
    rp.add_argument("--data-root", type=Path, required=True)
    rp.add_argument("--model", type=Path, required=True)
    rp.add_argument("--sizes", default="79,5000", help="comma-separated image counts")
    de = sub.add_parser("decode", help="the reduced-scale JPEG decode: AP, host ms and img/s with and without")
    de.add_argument("--data-root", type=Path, required=True)
    de.add_argument("--model", type=Path, required=True)
    de.add_argument("--images", type=int, default=2000, help="the speed runs' set size (the set repeated)")
    de.add_argument("--factor", type=int, default=2, help="the upscaled copy's size factor")
    de.add_argument("--repeat", type=int, default=4, help="speed runs per setting, alternating; medians reported")
    ta = sub.add_parser("tail", help="after the last image: evaluation, exports, report; rayinfer eval per engine")
    ta.add_argument("--data-root", type=Path, required=True)
    ta.add_argument("--images", type=int, default=5000, help="default: the size of COCO val2017")
    ta.add_argument("--output-model", type=Path,
                    default=Path(os.environ.get("RAYINFER_SHARED", "../shared")) / "models" / "yolov8n_int8.onnx",
                    help="its output for one image is what the devices return (default: YOLOv8n in $RAYINFER_SHARED)")
    gp = sub.add_parser("gpu", help="the real-GPU check: a dynamic-batch model at each batch size, AP and img/s")
    gp.add_argument("--data-root", type=Path, required=True)
    gp.add_argument("--model", type=Path,
                    default=Path(os.environ.get("RAYINFER_SHARED", "../shared")) / "models" / "yolov8n_fp32_dynbatch.onnx")
    gp.add_argument("--images", type=int, default=2000, help="the speed runs' set size (the set repeated)")
    gp.add_argument("--batch", default="1,8,32,auto", help="batch sizes, comma-separated")
    gp.add_argument("--providers", default="cuda", help="ONNX Runtime providers (cpu: checks the script without a GPU)")
    gp.add_argument("--seconds", type=float, default=5.0, help="the model-alone measurement per batch")
    el = sub.add_parser("elastic", help="from zero workers (fake autoscaler), 2 -> 6 devices mid-job, a straggler")
    el.add_argument("--latency-ms", type=float, default=200.0)
    el.add_argument("--capacity", type=int, help="streams per device (default 4), or engines (gpu: default 1)")
    el.add_argument("--shard-size", type=int, default=16)
    el.add_argument("--device", choices=("streams", "gpu"), default="streams",
                    help="stream-shaped devices, or GPU-shaped (--latency-ms fixed + --per-item-ms per sample)")
    el.add_argument("--per-item-ms", type=float, default=0.25, help="(gpu) each sample's share of a request")
    el.add_argument("--growth-samples", type=int, default=2400,
                    help="the growth case's job: long enough to outlast 4 nodes joining at 8 s (scale with the rate)")
    el.add_argument("--straggler-samples", type=int, default=1200)
    args = parser.parse_args(argv)
    if args.bench in ("scale", "elastic") and args.capacity is None:
        args.capacity = 1 if args.device == "gpu" else 4
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("ray", "rayinfer.jobs.driver", "rayinfer.jobs.scheduler", "rayinfer.jobs.cluster",
                  "rayinfer.jobs.placement"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    if args.bench == "runtime":
        from benchmarks.runtime import run_runtime_bench


        result = run_runtime_bench(args.model, args.seconds, args.providers.split(","))
    elif args.bench == "pipeline":
        from benchmarks.pipeline import run_pipeline_bench

        result = run_pipeline_bench(args.data_root, args.model, args.images, grid=not args.quick,
                                    repeat=max(1, args.repeat))
    elif args.bench == "accel" and args.device == "gpu":
        from benchmarks.batching import run_gpu_accel_bench

        images = args.images if args.images != ac.get_default("images") else 1500
        result = run_gpu_accel_bench(args.data_root, images, args.devices, args.fixed_ms, args.per_item_ms,
                                     args.output_model, repeat=max(1, args.repeat))
    elif args.bench == "accel":
        from benchmarks.accel import run_accel_bench

        result = run_accel_bench(args.data_root, args.images, args.devices, args.latency_ms, args.capacity,
                                 args.output_model, [int(v) for v in args.raydata_batches.split(",") if v])
    elif args.bench == "storage":
        from benchmarks.storage import run_storage_bench

        result = run_storage_bench(args.data_root, args.images, args.devices, args.latency_ms, args.capacity,
                                   args.delay_ms, args.samples_per_shard)
    elif args.bench == "runtimes":
        from benchmarks.runtimes import run_runtimes_bench

        result = run_runtimes_bench(args.task, args.data_root, args.model, args.images, max(1, args.repeat))
    elif args.bench == "decode":
        from benchmarks.decode import run_decode_bench

        result = run_decode_bench(args.data_root, args.model, args.images, args.factor, max(1, args.repeat))
    elif args.bench == "elastic":
        from benchmarks.elastic import run_elastic_bench

        result = run_elastic_bench(args.latency_ms, args.capacity, args.shard_size, args.growth_samples,
                                   args.straggler_samples, device=args.device, per_item_ms=args.per_item_ms)
    elif args.bench == "gpu":
        from benchmarks.gpu import run_gpu_bench

        result = run_gpu_bench(args.data_root, args.model, args.images, args.batch.split(","),
                               tuple(args.providers.split(",")), args.seconds)
    elif args.bench == "tail":
        from benchmarks.tail import run_tail_bench

        result = run_tail_bench(args.data_root, args.images, args.output_model)
    elif args.bench == "report":
        from benchmarks.report import run_report_bench

        result = run_report_bench(args.data_root, args.model, [int(v) for v in args.sizes.split(",")])
    elif args.bench == "memory":
        from benchmarks.memory import run_memory_bench

        result = run_memory_bench(args.data_root, args.model, [int(v) for v in args.sizes.split(",")])
    else:
        from benchmarks.scale import run_scale_bench

        a, b = (int(v) for v in args.memory_sizes.split(","))
        result = run_scale_bench(args.max_devices, args.latency_ms, args.capacity, args.seconds, (a, b), args.device,
                                 args.per_item_ms)
    print(json.dumps(result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
