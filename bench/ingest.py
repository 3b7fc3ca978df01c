"""Images per second delivered to one training worker from a folder of PNGs, and the worker's peak memory.

Run:  python bench/ingest.py [--quick] [--json] [--images N] [--size PX] [--readers K]

The bench writes a folder of ``--images`` grey ``--size`` px PNGs (smooth random fields; 20 000 at 256 px by
default, 2 000 with ``--quick``) and times, in the same run:

* **raytopo**: the training stream of `raytopo.train.data.batch_iterator` on that folder forced to stream
  (``data.in_memory_max_bytes: 0``): a fresh seeded permutation, Ray tasks of ``data.reader_cpus`` CPU
  reading and decoding, the batches handed over as float tensors in [-1, 1];
* **Ray Data**: the same read function as a ``from_items -> map_batches`` pipeline (what the stream was first
  built on; printed to show why raytopo runs plain Ray tasks);
* **baseline**: a ``torch.utils.data.DataLoader`` with 2 worker processes (its best setting on 2 CPUs: more
  workers only add switching) over the same files, shuffled, decoding with the same function
  (`raytopo.data.folder.preprocess_pixels`) into the same float tensors.

Throughput is images per second over one pass of ``--images``, first batch excluded (start-up is printed on
its own). Peak memory is the ``ru_maxrss`` of a fresh process that takes 50 batches from the stream, against
one that loads the set in memory as raytopo does below the threshold (uint8) and as it did before streaming
(every image decoded to float32 by `ImageFolderDataset`). Target (issue 24): throughput ratio >= 0.9 on 2 CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402


def write_folder(folder: Path, count: int, size: int) -> None:
    """``count`` grey PNGs: Gaussian-smoothed noise (what a photo-like 256 px image costs to decode)."""
    from PIL import Image
    from scipy import ndimage

    folder.mkdir(parents=True, exist_ok=True)
    done = len(list(folder.glob("*.png")))
    rng = np.random.default_rng(done)
    for i in range(done, count):
        field = ndimage.gaussian_filter(rng.normal(size=(size // 4, size // 4)), 2)
        field = np.kron((field - field.min()) / (np.ptp(field) + 1e-9) * 255, np.ones((4, 4)))
        Image.fromarray(field.astype(np.uint8)).save(folder / f"img_{i:06d}.png")


def data_config(folder: Path, size: int, readers: float, in_memory_max_bytes: int = 0):
    from raytopo.data.config import DataConfig

    return DataConfig(source="folder", path=str(folder), convention="none", image_size=size,
                      eval_fraction=0, judge_fraction=0, in_memory_max_bytes=in_memory_max_bytes,
                      reader_cpus=readers)


def time_batches(batches, count: int) -> tuple[float, float]:
    """(seconds to the first batch, images per second over the following ``count`` batches)."""
    start = time.perf_counter()
    next(batches)
    ready = time.perf_counter()
    images = 0
    for _ in range(count):
        images += len(next(batches)["image"])
    return ready - start, images / (time.perf_counter() - ready)


def raytopo_rate(folder: Path, size: int, batch: int, batches: int, readers: float) -> tuple[float, float]:
    import torch

    from raytopo.train.data import batch_iterator

    stream = batch_iterator(data_config(folder, size, readers), batch, 0, 1, 0, torch.device("cpu"))
    try:
        return time_batches(stream, batches)
    finally:
        stream.close()


def ray_data_rate(folder: Path, size: int, batch: int, batches: int, readers: float) -> tuple[float, float]:
    """The same reads as a Ray Data pipeline (``from_items`` -> ``map_batches(read_rows)``, order kept): what
    raytopo's stream was first built on, timed to show why it runs plain tasks instead."""
    import logging

    import ray.data

    from raytopo.data.rows import read_items, read_rows
    from raytopo.data.sources import file_data, read_spec
    from raytopo.train.data import task_rows

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    data = data_config(folder, size, readers)
    index, rows = file_data(data).rows("train")
    per_task = task_rows(data, False)
    items = read_items(index, np.random.default_rng(0).permutation(rows))
    dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items) // per_task)).map_batches(
        read_rows, fn_kwargs={"spec": read_spec(data, index)}, batch_size=None, batch_format="numpy",
        num_cpus=readers)
    return time_batches(iter(dataset.iter_batches(batch_size=batch, batch_format="numpy")), batches)


class FolderImages:
    """The baseline's dataset: one file -> the same decode and resize -> float32 [C, S, S] in [-1, 1]."""

    def __init__(self, folder: Path, size: int) -> None:
        self.files = sorted(folder.glob("*.png"))
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import torch

        from raytopo.data.folder import open_image, preprocess_pixels

        pixels = preprocess_pixels(open_image(self.files[i].read_bytes(), str(self.files[i])), self.size, 1)
        return {"image": torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1)}


def dataloader_rate(folder: Path, size: int, batch: int, batches: int, workers: int) -> tuple[float, float]:
    import torch

    loader = torch.utils.data.DataLoader(FolderImages(folder, size), batch_size=batch, shuffle=True,
                                         num_workers=workers, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))
    return time_batches(iter(loader), batches)


def peak_rss_mb(mode: str, folder: Path, size: int, batch: int) -> float:
    """``ru_maxrss`` (MB) of a fresh process that streams 50 batches or loads the set in memory."""
    code = f"""
import resource, sys, torch, ray
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from ingest import data_config
torch.set_num_threads(1)
mode, folder = {mode!r}, {str(folder)!r}
if mode == "streaming":
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    from raytopo.train.data import batch_iterator
    stream = batch_iterator(data_config(__import__("pathlib").Path(folder), {size}, 1.0), {batch}, 0, 1, 0, torch.device("cpu"))
    for _ in range(50):
        next(stream)
    stream.close()
elif mode == "in_memory":
    from raytopo.data.sources import training_arrays
    arrays = training_arrays(data_config(__import__("pathlib").Path(folder), {size}, 1.0, 1 << 62))
else:
    import numpy as np
    from raytopo.data.folder import ImageFolderDataset
    dataset = ImageFolderDataset(folder, "none", {size})
    arrays = np.stack([dataset[i]["image"].numpy() for i in range(len(dataset))])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 000 images, one round")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--readers", type=float, default=1.0, help="data.reader_cpus of each read task")
    parser.add_argument("--workers", type=int, default=2, help="the DataLoader's worker processes")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--folder", type=Path, default=None, help="reuse (and extend) this folder of PNGs")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds of each (median kept)")
    args = parser.parse_args()
    count = args.images or (2000 if args.quick else 20000)
    rounds = args.rounds or (1 if args.quick else 3)
    folder = args.folder or Path(tempfile.gettempdir()) / f"raytopo-ingest-{args.size}px"
    log = (lambda *a: None) if args.json else print
    started = time.perf_counter()
    write_folder(folder, count, args.size)
    log(f"folder: {count} PNGs of {args.size} px at {folder} ({time.perf_counter() - started:.0f} s to write)")

    import ray
    import torch

    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    batches = count // args.batch - 2
    ours, theirs, ray_data, startup = [], [], [], []
    for _ in range(rounds):
        start, rate = raytopo_rate(folder, args.size, args.batch, batches, args.readers)
        ours.append(rate)
        startup.append(start)
        theirs.append(dataloader_rate(folder, args.size, args.batch, batches, args.workers)[1])
        ray_data.append(ray_data_rate(folder, args.size, args.batch, batches, args.readers)[1])
    ray.shutdown()
    rss = {mode: peak_rss_mb(mode, folder, args.size, args.batch)
           for mode in ("streaming", "in_memory", "float32_in_memory")}
    result = {"images": count, "size": args.size, "batch": args.batch, "num_cpus": args.num_cpus,
              "images_per_second": float(np.median(ours)), "baseline_images_per_second": float(np.median(theirs)),
              "ratio": float(np.median(ours) / np.median(theirs)), "first_batch_seconds": float(np.median(startup)),
              "ray_data_images_per_second": float(np.median(ray_data)),
              "peak_rss_streaming_mb": rss["streaming"], "peak_rss_in_memory_mb": rss["in_memory"],
              "peak_rss_float32_in_memory_mb": rss["float32_in_memory"], "rounds": rounds}
    if args.json:
        print(json.dumps(result))
        return
    print(f"raytopo stream   {result['images_per_second']:8.1f} images/s  (first batch after "
          f"{result['first_batch_seconds']:.1f} s)")
    print(f"DataLoader x{args.workers}    {result['baseline_images_per_second']:8.1f} images/s")
    print(f"Ray Data         {result['ray_data_images_per_second']:8.1f} images/s  (the same reads as a Ray Data "
          "pipeline, not used)")
    print(f"ratio            {result['ratio']:8.2f}  (target >= 0.9)")
    print(f"peak RSS of the training process: streaming {rss['streaming']:.0f} MB, in memory (uint8) "
          f"{rss['in_memory']:.0f} MB, in memory as before streaming (float32) {rss['float32_in_memory']:.0f} MB")


if __name__ == "__main__":
    main()
    sys.exit(0)
