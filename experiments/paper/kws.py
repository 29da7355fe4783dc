"""Table 1 of the paper: keyword spotting with a DS-CNN grown by splitting vs Bn-prune, on Speech Commands.

    python experiments/paper/kws.py                          # one seed, about 6-8 minutes on one free CPU core
    python experiments/paper/kws.py --seeds 0 1 2            # the numbers of docs/paper.md

The offline folder (default ../shared/data/speech_commands) holds the official v0.02 test set only
(4,890 clips, 12 classes); it is split *by speaker* into train / validation / test (about 70 / 15 / 15 %
of the speakers, by SHA-1 of the speaker id). Inputs: 40 log-mel bands, pairs of 10 ms frames averaged
(50 x 40). Reduced recipe (nni_splitting.paper.kws.KWSRecipe): a DS-CNN of widths 16 grown 3 times by
splitting (+35 % of the conv neurons each, 5 epochs before each split, 15 final epochs) vs the full
DS-CNN (widths 64, 20 epochs) pruned to the same parameter count with network slimming (Bn-prune,
"bn_slim", 300 sparsity steps) and with NNI's SlimPruner ("slim"), then fine-tuned 10 epochs. SGD,
batch 32, lr 0.2 (pruning and fine-tuning 0.04), cosine schedule per phase. Writes
docs/figures/kws_accuracy.png and runs/paper/kws.json.
"""
import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from nni_splitting.paper.figures import plot_kws
from nni_splitting.paper.kws import SOURCES, KWSRecipe, load_speech_commands, run_kws_experiment

ROOT = Path(__file__).resolve().parents[2]


def main(argv=None):
    defaults = KWSRecipe()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "speech_commands")
    parser.add_argument("--source", choices=SOURCES, default="auto",
                        help="log-mel file, raw-audio file (features computed here) or <class>/*.wav folders")
    parser.add_argument("--start-width", type=int, default=defaults.start_widths[0])
    parser.add_argument("--full-width", type=int, default=defaults.full_widths[0])
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--grow-ratio", type=float, default=defaults.grow_ratio)
    parser.add_argument("--epochs-per-step", type=int, default=defaults.epochs_per_step)
    parser.add_argument("--final-epochs", type=int, default=defaults.final_epochs)
    parser.add_argument("--full-epochs", type=int, default=defaults.full_epochs)
    parser.add_argument("--prune-steps", type=int, default=defaults.prune_steps)
    parser.add_argument("--finetune-epochs", type=int, default=defaults.finetune_epochs)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--time-pool", type=int, default=2, help="average this many 10 ms frames (2: 50 frames)")
    parser.add_argument("--arms", nargs="+", default=list(defaults.arms))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures" / "kws_accuracy.png")
    parser.add_argument("--json", type=Path, default=ROOT / "runs" / "paper" / "kws.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)

    data = load_speech_commands(args.data_dir, source=args.source, time_pool=args.time_pool)
    recipe = defaults._replace(start_widths=(args.start_width,) * 5, full_widths=(args.full_width,) * 5,
                               steps=args.steps, grow_ratio=args.grow_ratio, epochs_per_step=args.epochs_per_step,
                               final_epochs=args.final_epochs, full_epochs=args.full_epochs,
                               prune_steps=args.prune_steps, finetune_epochs=args.finetune_epochs, lr=args.lr,
                               batch_size=args.batch_size, arms=tuple(args.arms))
    rows, growth = [], []
    for seed in args.seeds:
        result = run_kws_experiment(data, recipe, seed=seed)
        rows += result["rows"]
        growth += result["growth"]
    during = f"splitting, during growth ({recipe.epochs_per_step} epochs per step)"
    plot_kws(rows + [dict(r, arm=during) for r in growth], args.figure)
    table = {}
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        acc = [100 * r["test_acc"] for r in mine]
        table[arm] = {"test_acc_mean": float(np.mean(acc)), "test_acc_std": float(np.std(acc)), "test_acc": acc,
                      "params": float(np.mean([r["params"] for r in mine])),
                      "flops": float(np.mean([r["flops"] for r in mine])),
                      "seconds": float(np.mean([r["seconds"] for r in mine]))}
    summary = {"recipe": recipe._asdict(), "seeds": args.seeds, "source": data.source, "time_pool": args.time_pool,
               "threads": args.threads, "input_shape": list(data.train.tensors[0].shape[1:]),
               "clips": {s: len(getattr(data, s)) for s in ("train", "val", "test")},
               "speakers": {s: len(v) for s, v in data.speakers.items()}, "table": table, "rows": rows,
               "growth": growth}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=1, default=str))
    print(f"clips train/val/test: {summary['clips']}, speakers: {summary['speakers']}, seeds: {args.seeds}")
    print(f"{'arm':10s} {'test acc (%)':>14s} {'params':>8s} {'ops (M)':>8s}")
    for arm, entry in table.items():
        print(f"{arm:10s} {entry['test_acc_mean']:7.2f} ± {entry['test_acc_std']:4.2f} {entry['params']:8.0f} "
              f"{entry['flops'] / 1e6:8.2f}")
    print(f"figure: {args.figure}\nnumbers: {args.json}")


if __name__ == "__main__":
    main()
