"""`p4d assets check|synth|list`."""

from __future__ import annotations

import argparse

from components.config import PROFILES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("assets", help="list, check or synthesize the user-supplied asset bundle")
    sub = parser.add_subparsers(dest="assets_command", required=True, metavar="COMMAND")

    ls = sub.add_parser("list", help="every external file the system reads, with where to obtain it")
    ls.set_defaults(func=_list)

    check = sub.add_parser(
        "check",
        help="verify an asset directory (exit 1 if a required asset is not ok)",
        description="Read every asset for real (no code from any file runs) and print one line per asset: "
        "ok / missing / wrong format, with the reason. Exit status 1 if a required asset is not ok.",
    )
    check.add_argument("--dir", required=True, help="asset directory")
    check.set_defaults(func=_check)

    synth = sub.add_parser(
        "synth",
        help="write a synthetic bundle in the real file formats (random weights, marked synthetic)",
        description="Write a self-consistent synthetic asset bundle in the REAL file formats (FLAME chumpy "
        "pickle, landmark embeddings, official-style network pickles, state dicts) with random weights. "
        "bundle.json marks it synthetic, so no report or registry entry can pass it off as real weights.",
    )
    synth.add_argument("--out", required=True, help="output directory (replaced only if it is a synthetic bundle)")
    synth.add_argument("--profile", choices=PROFILES, default="tiny", help="network sizes (paper writes GBs)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (same seed, same arrays and weights)")
    synth.set_defaults(func=_synth)


def _list(args: argparse.Namespace) -> int:
    from components.assets.manifest import ASSETS

    for a in ASSETS:
        print(f"{a.name:<20} {a.path:<42} {'required' if a.required else 'optional'}")
        print(f"{'':<20} format: {a.format}")
        print(f"{'':<20} obtain: {a.obtain}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from components.assets.check import check_assets

    bundle, results = check_assets(args.dir)
    kind = "SYNTHETIC bundle (random weights, not for evaluation)" if bundle.synthetic else "real assets"
    print(f"{args.dir}: {kind}, profile {bundle.profile}")
    for r in results:
        print(r.line())
    bad = [r for r in results if r.spec.required and r.status != "ok"]
    if bad:
        print(f"{len(bad)} required asset(s) not ok")
        return 1
    return 0


def _synth(args: argparse.Namespace) -> int:
    from components.assets.synth import synthesize_bundle

    out = synthesize_bundle(args.out, profile=args.profile, seed=args.seed)
    print(f"wrote synthetic {args.profile} bundle to {out}")
    return 0
