"""Training-step throughput (forward + backward + optimizer step) of a recipe's model, on random data.

    python benchmarks/train_step.py configs/lraspp_mobilenetv3_camvid.yaml --steps 5

Uses the recipe's model, crop size, batch size and optimizer; the data is random, so the
figure is the model's cost alone, to compare with what the data loader delivers
(benchmarks/loader_throughput.py).
"""

from __future__ import annotations

import argparse
import time

import torch

from semseg.allocator import keep_freed_memory
from semseg.config import load_config
from semseg.engine.train import TrainForward, training_loss
from semseg.engine.trainer import build_loss, build_optimizer
from semseg.registry import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    parser.add_argument("--num-classes", type=int, default=11)
    parser.add_argument("--channels-last", action="store_true", help="NHWC model and batch (the trainer's default)")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="tune glibc's allocator as `semseg train` does (semseg.allocator)")
    args = parser.parse_args()
    if args.keep_freed_memory:
        keep_freed_memory()
    config = load_config(args.config)
    torch.manual_seed(0)
    model = create_model(config.model.name, num_classes=args.num_classes, **config.model.options)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    net, loss_fn, optimizer = TrainForward(model).train(), build_loss(config, args.num_classes), build_optimizer(config, model)
    h, w = config.data.crop_size or (360, 480)
    n = config.data.batch_size
    x, y = torch.randn(n, 3, h, w).contiguous(memory_format=fmt), torch.randint(0, args.num_classes, (n, h, w))
    for step in range(args.steps + 1):
        if step == 1:
            start = time.perf_counter()
        loss = training_loss(net(x), y, loss_fn, model.aux_weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    rate = n * args.steps / (time.perf_counter() - start)
    layout = "channels_last" if args.channels_last else "NCHW"
    allocator = ", allocator tuned" if args.keep_freed_memory else ""
    print(f"{config.model.name} {h}x{w} batch {n} {layout}{allocator}, {torch.get_num_threads()} threads: "
          f"{rate:.2f} images/s")


if __name__ == "__main__":
    main()
