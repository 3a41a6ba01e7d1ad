"""The floor under every sampling time: the U-Net's and the decoder's FLOPs per slice (torch.utils.flop_counter),
the machine's achieved FLOP/s on a big fp32 matmul, and the U-Net's achieved FLOP/s against batch size (does
batching buy anything on this CPU?) and memory format (channels-last). Writes results/flops.json.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import model_dir, random_model, write_results


def unet_inputs(config, batch: int):
    s = config.unet_size
    return (torch.randn(batch, config.unet_in_channels, s, s), torch.full((batch,), 500),
            torch.randn(batch, config.max_inputs + 1, config.unet.cross_attention_dim), torch.randn(batch, config.unet.time_embed_dim))


def count_flops(function) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        function()
    return int(counter.get_total_flops())


def best_seconds(function, repeats: int = 3, budget: float = 20.0) -> float:
    function()  # warm-up: oneDNN builds its kernels for each new shape
    times, started = [], time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        function()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - started > budget:
            break
    return min(times)


def matmul_peak(size: int = 2048) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = best_seconds(lambda: torch.mm(a, b), repeats=10)
    return 2 * size**3 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="only its architecture matters; default: the default model's")
    parser.add_argument("--batches", default="1,2,8,32,128,256")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.model:
        from xdiffusion.model import load_model

        model = load_model(model_dir(args.model))
    else:
        model = random_model(64)
    config, unet, autoencoder = model.config, model.unet.eval(), model.autoencoder
    unet_flops = count_flops(lambda: unet(*unet_inputs(config, 1)[:2], encoder_hidden_states=unet_inputs(config, 1)[2], class_labels=unet_inputs(config, 1)[3]))
    decode_flops = 0
    if autoencoder is not None:
        latents = torch.randn(1, config.target_channels, config.unet_size, config.unet_size)
        decode_flops = count_flops(lambda: autoencoder.decode(latents))
    peak = matmul_peak()
    print(f"U-Net {unet_flops / 1e9:.3f} GFLOP per slice, decoder {decode_flops / 1e9:.3f} GFLOP per slice; "
          f"fp32 matmul 2048^3 achieves {peak / 1e9:.1f} GFLOP/s on {torch.get_num_threads()} threads")

    channels_last = copy.deepcopy(unet).to(memory_format=torch.channels_last)
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        x, t, tokens, vector = unet_inputs(config, batch)
        seconds = best_seconds(lambda: unet(x, t, encoder_hidden_states=tokens, class_labels=vector), repeats=3 if batch <= 32 else 2)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        seconds_cl = best_seconds(lambda: channels_last(x_cl, t, encoder_hidden_states=tokens, class_labels=vector), repeats=2 if batch <= 32 else 1)
        row = {"batch": batch, "seconds_per_call": round(seconds, 4), "slices_per_second": round(batch / seconds, 1),
               "gflops_achieved": round(unet_flops * batch / seconds / 1e9, 1),
               "channels_last_slices_per_second": round(batch / seconds_cl, 1)}
        rows.append(row)
        print(f"U-Net batch {batch:>4}: {row['slices_per_second']:>7.1f} slices/s ({row['gflops_achieved']} GFLOP/s, "
              f"{100 * unet_flops * batch / seconds / peak:.0f}% of the matmul rate); channels-last {row['channels_last_slices_per_second']} slices/s")
    decode = None
    if autoencoder is not None:
        latents = torch.randn(64, config.target_channels, config.unet_size, config.unet_size)
        seconds = best_seconds(lambda: autoencoder.decode(latents), repeats=2)
        decode = {"batch": 64, "slices_per_second": round(64 / seconds, 1), "gflops_achieved": round(decode_flops * 64 / seconds / 1e9, 1)}
        print(f"decoder batch 64: {decode['slices_per_second']} slices/s ({decode['gflops_achieved']} GFLOP/s)")
    path = write_results("flops", {
        "cube_size": config.cube_size, "unet_size": config.unet_size,
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "unet_gflop_per_slice": round(unet_flops / 1e9, 4), "decoder_gflop_per_slice": round(decode_flops / 1e9, 4),
        "matmul_gflops": round(peak / 1e9, 1), "unet_batches": rows, "decoder": decode,
    })
    print(f"written to {path}")


if __name__ == "__main__":
    main()
