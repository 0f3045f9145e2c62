"""``ecdp train``: one training stage from a YAML config (see ecdp.config and ecdp.train).

Single process: ``ecdp train --config configs/div2k_x4.yaml --data DIV2K_HR --out runs/x4``;
several: ``torchrun --nproc-per-node N -m ecdp train ...`` (DistributedDataParallel).
"""
from ecdp.choices import STAGES


def add_parser(subparsers):
    p = subparsers.add_parser("train", help="train a stage (encoder, score, quality) of an ECDP model",
                              description="Train one stage of an ECDP model; run it under torchrun for "
                                          "several processes.")
    p.add_argument("--config", required=True, metavar="FILE", help="YAML config (see configs/)")
    p.add_argument("--data", nargs="+", metavar="DIR",
                   help="HR image folders, searched recursively (replaces data.hr)")
    p.add_argument("--paired-lr", nargs="+", metavar="DIR",
                   help="LR folders paired with the --data folders (replaces data.lr; default: bicubic downscaling)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder: checkpoints, log.csv, model/")
    p.add_argument("--stage", choices=STAGES, default="score", help="training stage (default: score)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --out (start afresh if there is none)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. --set train.lr=2e-4 data.crop=96")
    p.add_argument("--seed", type=int, help="replaces train.seed")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available); under torchrun "
                                    "each process takes the GPU of its LOCAL_RANK")
    p.set_defaults(run=run)


def run(args):
    from ecdp.config import load_config
    from ecdp.train import train

    seed = [f"train.seed={args.seed}"] if args.seed is not None else []
    config = load_config(args.config, [*args.set, *seed])
    config.data.hr = args.data or config.data.hr
    config.data.lr = args.paired_lr or config.data.lr
    train(config, stage=args.stage, out=args.out, resume=args.resume, device=args.device)
