"""PyTorch side of tools/bench/perception.sh: forward time of one perception model on a
full-size checkpoint folder written by the tools/parity/*.py `full` modes.

Usage: perception_ref.py MODEL DIR WARMUP RUNS THREADS
MODEL: clip (CLIP vision tower), owlv2 (image_embedder + box/objectness/class image heads),
sam (image encoder), depth (Depth Anything V2 forward). eval(), no_grad, THREADS intra-op
threads. The input is the same deterministic pattern as the Rust example
crates/cielr-scene/examples/perception_bench.rs: x[i] = ((i * 7919) % 1000) / 500 - 1 over
the flattened [1, 3, size, size] tensor. Prints one JSON line {"model", "size", "times_s"}.
"""
import json
import sys
import time

import torch


def pattern(size):
    i = torch.arange(3 * size * size, dtype=torch.int64)
    return (((i * 7919) % 1000).float() / 500.0 - 1.0).reshape(1, 3, size, size)


def main():
    model_name, folder, warmup, runs, threads = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    torch.set_num_threads(threads)
    if model_name == "clip":
        from transformers import CLIPModel
        m = CLIPModel.from_pretrained(folder).eval()
        size = m.config.vision_config.image_size
        fn = lambda px: m.vision_model(pixel_values=px)
    elif model_name == "owlv2":
        from transformers import Owlv2ForObjectDetection
        m = Owlv2ForObjectDetection.from_pretrained(folder).eval()
        size = m.config.vision_config.image_size

        def fn(px):
            # What cielr's embed_pixels computes: the vision tower and merged patch features,
            # then the query-independent heads (boxes, objectness, class image embeddings).
            feats = m.image_embedder(pixel_values=px)[0]
            b, h, w, d = feats.shape
            flat = feats.reshape(b, h * w, d)
            m.box_predictor(flat, feats)
            m.objectness_predictor(flat)
            m.class_head.dense0(flat)
    elif model_name == "sam":
        from transformers import SamModel
        m = SamModel.from_pretrained(folder).eval()
        size = 1024
        fn = lambda px: m.get_image_embeddings(px)
    elif model_name == "depth":
        from transformers import DepthAnythingForDepthEstimation
        m = DepthAnythingForDepthEstimation.from_pretrained(folder).eval()
        size = 518
        fn = lambda px: m(pixel_values=px)
    else:
        sys.exit(f"unknown model {model_name}")
    px = pattern(size)
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            fn(px)
        for _ in range(runs):
            t = time.perf_counter()
            fn(px)
            times.append(time.perf_counter() - t)
    print(json.dumps({"model": model_name, "size": size, "times_s": times,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
