"""Benchmarks that print figures (never timed asserts). Each prints a table and, as
its last line, one JSON object.

`python -m benchmarks runtime --model M [--seconds S]`
    One model, no Ray: one request at a time vs the request queue with 1, 2, 4 and the
    automatic number of requests; `limit` = cores x single-thread rate. Keys: sync,
    requests1, requests2, requests4, auto, limit (img/s).
`python -m benchmarks pipeline --data-root D --model M --images N [--repeat K]`
    The whole COCO job vs a naive loop and Ray Data on the same N images (the set
    repeated). rayinfer runs K times (default 3), each between two measurements of the
    limits; medians are reported. `limit` adds up single-thread costs measured one image
    at a time; `limit_loaded` measures the same costs with every core running them at
    once. Keys: sync, raydata_default, raydata_best, rayinfer, rayinfer_steady, limit,
    limit_loaded (img/s).
`python -m benchmarks accel --data-root D`
    Real JPEG decode + letterbox feeding simulated devices (Ray custom resource
    `sim_device`): Ray Data map_batches (best batch size) vs rayinfer, and the bound
    min(devices x C / latency, CPU preprocessing limit). Keys: raydata, rayinfer, bound.
`python -m benchmarks accel --device gpu --data-root D [--fixed-ms 4] [--per-item-ms 0.25] [--images 1500]`
    GPU-shaped simulated devices (a request of B samples takes fixed + per item x B).
    The null task (host work trivial) at --batch auto and at --batch 1, against the device
    bound at the batch auto chose; then the COCO task (host work real: the host is the
    limit on a small machine) at auto and at 1, alternating, medians. Keys: device_bound,
    batch_chosen, rate_batched, rate_unbatched, ratio_to_bound, ratio_to_unbatched,
    host_bound_loaded, host_rate_auto, host_rate_batch1, host_ratio.
`python -m benchmarks gpu --data-root D [--model M] [--batch 1,8,32,auto] [--providers cuda]`
    The prepared check for a real GPU: the dynamic-batch YOLOv8n through the whole COCO job
    at each batch on ONNX Runtime's CUDA provider: AP on D, job img/s on D repeated to
    --images, the model alone at that batch, host cores per GPU. Keys: runs[{batch,
    batch_run, ap, ap50, img_s, model_img_s, model_p50_ms, host_ms_per_image,
    host_cores_per_gpu}]. `--providers cpu` checks the script where there is no GPU.
`python -m benchmarks scale`
    1..64 simulated devices, one actor each, trivial host work: achieved vs ideal
    samples/s, and peak memory at 1k vs 20k samples. Keys: efficiency_N, ...
`python -m benchmarks memory --data-root D --model M [--sizes 1000,5000]`
    The whole COCO job (evaluation, coco_results.json and the report included) on the set
    repeated to each size, each in a fresh process: peak RSS of the driver process (its
    own getrusage, taken after the job returns) and of the actor. Keys: driver_mb_1k,
    driver_mb_5k, actor_mb_1k, actor_mb_5k (sizes named in thousands), driver_growth,
    actor_growth (5k / 1k - 1).
`python -m benchmarks decode --data-root D --model M [--images N] [--factor F] [--repeat K]`
    The opt-in reduced-scale JPEG decode (`--reduced-decode`), off and on, on the COCO set as
    it is and upscaled F times (no val2017 image is twice a 640 input): AP and AP50 of the
    whole job with the real model; host ms per image of the plain loop and img/s of the job
    on simulated fast devices (2 ms, 8 streams), medians of K alternating runs. Keys: {as_is,x2}_{full,reduced}_{ap,ap50,
    host_ms,actor_ms,img_s}.
`python -m benchmarks tail --data-root D [--images 5000]`
    What comes after the last image is inferred: the COCO job on the set repeated to N
    images, two simulated fast devices returning one real YOLOv8n output (val2017's volume
    of detections), run as `rayinfer run`; then `rayinfer eval` on its folder with each COCO
    engine. Keys: inference_s, after_last_shard_s (last shard -> metrics.json),
    evaluation_overlapped_s, report_s, report_after_metrics_s, total_s, end_to_end_ratio
    (end to end / steady img/s), offline_eval_s, offline_eval_pycocotools_s, offline_ratio,
    stats_equal (the 12 stats of the job and of both engines within 1e-6).
`python -m benchmarks elastic`
    Clusters that change under a job (simulated devices, the `null` task): from zero workers
    on Ray's fake autoscaler (time to the first result from the command, and Ray's own node
    start time), 2 -> 6 devices mid-job (the rate 10 s after the nodes joined against a
    fixed 6-device run), and 4 devices with one 3x slower (job time / the ideal for that
    capacity, with and without speculative copies). Keys: first_result_s, node_start_s,
    growth_ratio, straggler_ratio, straggler_ratio_no_speculation, ...

Each mode (and each Ray Data grid point) gets a freshly started Ray, so nothing one
leaves behind slows the next. Throughput of a Ray mode counts from the start of its
actors to its last result; rayinfer's metrics evaluation after inference is not counted.
"""
