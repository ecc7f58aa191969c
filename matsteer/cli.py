"""The ``matsteer`` command line: a thin shell over the library (``matsteer <command> --help``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import MatSteerError

DATASETS = ("truthfulqa", "toxigen", "bbq", "hh_rlhf", "paradetox")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .models import DEFAULT_MODEL, DTYPES

    p.add_argument("--model", default=DEFAULT_MODEL, help=f"{DEFAULT_MODEL} (embedded), a local folder or a HF id")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: where the model loads)")
    p.add_argument("--device-map", "--device_map", dest="device_map", default=None,
                   help="accelerate device map for large models, e.g. auto (spreads over all GPUs)")


def default_feature_dir(model: str, dataset: str, split: str, layer: int, site: str, tokens: str) -> Path:
    safe_model = model.strip("/").replace("/", "--")
    return Path("features") / safe_model / f"{dataset}-{split}-L{layer}-{site}-{tokens}"


def cmd_extract(args: argparse.Namespace) -> int:
    from .data import load_examples
    from .features import extract_to_folder
    from .models import load_model
    from .sites import Site

    site = Site(args.layer, args.site)
    examples = load_examples(args.dataset, args.split, limit=args.limit)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map)
    out = Path(args.out) if args.out else default_feature_dir(args.model, args.dataset, args.split, args.layer,
                                                              args.site, args.tokens)
    fs = extract_to_folder(loaded, examples, site, out, tokens=args.tokens, dataset=args.dataset, split=args.split,
                           batch_size=args.batch_size, max_length=args.max_length)
    m = fs.manifest
    print(f"{out}: {m['rows']} rows x d={m['d']} from {m['texts']} texts "
          f"({m['positives']} positive / {m['negatives']} negative rows) at {site}, tokens={args.tokens}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="matsteer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="extract activations of a dataset split at one site into a feature folder")
    _add_model_args(p)
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--split", default="train", choices=("train", "dev", "test", "all"))
    p.add_argument("--layer", type=int, default=14)
    p.add_argument("--site", default="residual", choices=("residual", "attn_output", "attn_heads"))
    p.add_argument("--tokens", default="answer", choices=("all", "answer", "last"),
                   help="all tokens (the paper), the answer span (default), or the last token (the reference code)")
    p.add_argument("--out", default=None, help="feature folder (default: features/<model>/<dataset>-<split>-L<layer>-...)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N groups (questions) of the split")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=16)
    p.add_argument("--max-length", dest="max_length", type=int, default=512, help="truncate texts to this many tokens")
    p.set_defaults(func=cmd_extract)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MatSteerError as exc:
        print(f"matsteer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
