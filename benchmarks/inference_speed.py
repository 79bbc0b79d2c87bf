"""CPU inference latency and multiply-adds: dense, weight-pruned, and channel-pruned + slimmed networks.

    python benchmarks/inference_speed.py [--model resnet32] [--repeats 5] [--rounds 3] [--threads 1] [--target-density 0.3]

`--model`: `resnet32` (this project's CIFAR ResNet-32, CIFAR-100 head, 32x32 inputs), `hf-resnet50`
(transformers' `ResNetForImageClassification` at its ResNet-50 defaults, 1000 classes, 224x224; slimmed
into an LTResNet) or `convnext-tiny` (transformers' ConvNeXt-T, 224x224; its MLP channels are slimmed
into an `LTAPConvNext`). Networks of the same initialisation (eval mode):
- dense;
- weight-pruned: the lowest-|w| weights of the prunable tensors zeroed to `--target-density` (global
  ranking). Dense kernels still compute the zeros, so it runs at the dense speed;
- channel-pruned + slimmed: channels ranked by the group `magnitude`, pruned until the prunable
  *parameters* are at `--target-density`, then physically removed. Two allocations
  (`LTAPConfig.channel_allocation`): "global" ranks all channels together, which at initialisation
  (as in trained runs) keeps the residual streams, whose groups hold many slices, and the cheap early
  stages, so most multiply-adds stay; "uniform" keeps the same fraction of every group, with and
  without widths rounded to multiples of 8.

Latency: median over `--rounds` x `--repeats` timed forward passes at batch 1 and 128 under
`torch.inference_mode()`, the networks taking turns each round so that drifts of the machine hit all
of them; two warm-up passes first. Each network is timed in both memory formats: PyTorch's default
(NCHW) and `channels_last` (NHWC), the layout oneDNN's CPU convolutions prefer. Thin layers leave the
element-wise work (BatchNorm, ReLU, the residual addition) a large share of the time; in NHWC it costs
less, so slimming pays off more there. One thread by default: two threads on a 2-core machine were too
noisy to rank the variants. MACs are per image, by `ltap_hf.cost.model_cost` (dense kernels compute
every weight; "nonzero" leaves out the zeros a sparse kernel could skip).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from transformers import ConvNextConfig, ConvNextForImageClassification, ResNetConfig, ResNetForImageClassification

from ltap_hf import LTResNetConfig, LTResNetForImageClassification, model_cost
from ltap_hf.backbones import backbone_for
from ltap_hf.pruning import apply_masks, combine_scores, group_criteria, group_parameters, prunable_parameters, select_mask
from ltap_hf.pruning.groups import full_group_masks, parameter_density
from ltap_hf.pruning.selection import select_channel_groups


# name -> (dense network, input size)
MODELS = {
    "resnet32": (lambda: LTResNetForImageClassification(LTResNetConfig.from_preset("resnet32", num_labels=100)), (3, 32, 32)),
    "hf-resnet50": (lambda: ResNetForImageClassification(ResNetConfig(num_labels=1000)), (3, 224, 224)),
    "convnext-tiny": (lambda: ConvNextForImageClassification(ConvNextConfig(num_labels=1000)), (3, 224, 224)),
}


def dense_model(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[name][0]().eval()


@torch.no_grad()
def weight_pruned(model: nn.Module, density: float) -> tuple[nn.Module, float]:
    parameters = prunable_parameters(model)
    alive = {n: torch.ones_like(p, dtype=torch.bool) for n, p in parameters.items()}
    masks = select_mask({n: p.abs() for n, p in parameters.items()}, alive, density, min_layer_density=0.02)
    apply_masks(parameters, masks)
    return model, sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())


def channel_pruned_and_slimmed(model: nn.Module, density: float, allocation: str, round_to: int) -> tuple[nn.Module, float]:
    backbone = backbone_for(model)
    groups = backbone.channel_groups(model)
    alive = full_group_masks(groups)
    parameters = group_parameters(model, groups)
    no_gradient = {n: torch.zeros_like(p) for n, p in parameters.items()}
    no_taylor = {g.name: torch.zeros(g.num_channels) for g in groups}
    criteria = group_criteria(groups, parameters, no_gradient, no_taylor)
    scores = combine_scores(criteria, alive, torch.ones(1), criteria=["magnitude"])
    prunable = prunable_parameters(model)
    alive = select_channel_groups(groups, scores, alive, density, prunable, round_to=round_to, allocation=allocation)
    backbone.apply_channel_masks(model, groups, alive)
    return backbone.slim(model, groups, alive), parameter_density(groups, alive, prunable)


@torch.inference_mode()
def median_latencies(
    models: dict[str, nn.Module], input_size: tuple[int, int, int], batch_size: int, rounds: int, repeats: int,
    memory_format: torch.memory_format,
) -> dict[str, float]:
    pixels = torch.randn(batch_size, *input_size).contiguous(memory_format=memory_format)
    models = {name: model.to(memory_format=memory_format) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for name, model in models.items():
        for _ in range(2):
            model(pixels)
    for _ in range(rounds):
        for name, model in models.items():
            for _ in range(repeats):
                start = time.perf_counter()
                model(pixels)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(samples) for name, samples in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=list(MODELS), default="resnet32", help="the network to prune and time")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per network and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds in which the networks take turns")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--target-density", type=float, default=0.3, help="fraction of prunable weights kept")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    input_size = MODELS[args.model][1]
    variants = {
        "dense": (dense_model(args.model, args.seed), 1.0),
        "weight-pruned (zeros)": weight_pruned(dense_model(args.model, args.seed), args.target_density),
    }
    for allocation, round_to in (("global", 1), ("uniform", 1), ("uniform", 8)):
        name = f"channel, {allocation}, slimmed" + (", widths x8" if round_to > 1 else "")
        variants[name] = channel_pruned_and_slimmed(dense_model(args.model, args.seed), args.target_density, allocation,
                                                    round_to)
        config = variants[name][0].config
        widths = getattr(config, "intermediate_sizes", None) or [[b[0] for b in s] for s in config.block_widths]
        print(f"{name}: {type(variants[name][0]).__name__}, hidden_sizes={config.hidden_sizes}, first inner widths={widths}")
    models = {name: model for name, (model, _) in variants.items()}
    dense_cost = model_cost(models["dense"], input_size)
    for format_name, memory_format in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        latency_1 = median_latencies(models, input_size, 1, args.rounds, args.repeats, memory_format)
        latency_128 = median_latencies(models, input_size, 128, args.rounds, args.repeats, memory_format)
        print(f"\n{args.model}, {input_size[1]}x{input_size[2]}, CPU, {format_name}, {args.threads} thread(s), median of "
              f"{args.rounds}x{args.repeats}; ratios to dense\n")
        header = ("model", "prunable density", "params (nonzero)", "MACs (dense kernel)", "MACs nonzero",
                  "batch 1 ms", "x dense", "batch 128 ms", "x dense")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for name, (model, density) in variants.items():
            cost = model_cost(model, input_size)
            print(
                f"| {name} | {density:.3f} | {cost.parameters_nonzero:,} | {cost.macs / 1e6:.1f}M "
                f"({cost.macs / dense_cost.macs:.2f}x) | {cost.macs_nonzero / 1e6:.1f}M "
                f"({cost.macs_nonzero / dense_cost.macs:.2f}x) | {latency_1[name] * 1e3:.2f} | "
                f"{latency_1[name] / latency_1['dense']:.2f} | {latency_128[name] * 1e3:.1f} | "
                f"{latency_128[name] / latency_128['dense']:.2f} |"
            )

if __name__ == "__main__":
    main()
