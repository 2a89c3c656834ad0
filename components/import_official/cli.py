"""`p4d import-official`: official weights -> ``OUT.safetensors`` + ``OUT.json`` (keys and shapes checked)."""

from __future__ import annotations

import argparse

from components.import_official.importer import PICKLE_KINDS, PTH_KEY_LISTS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-official",
        help="import official Portrait4D weights as safetensors (no code from the file runs)",
        description="Read an official network pickle (genhead-ffhq512.pkl, portrait4d-static-genhead512.pkl, "
        "portrait4d-v2-vfhq512.pkl) or state dict (PD-FGC motion_model.pth, ArcFace backbone.pth, LPIPS vgg.pth) "
        "as data only, check every key and shape against the official architecture, and write OUT.safetensors "
        "plus an OUT.json sidecar (kind, init kwargs, rendering kwargs, source sha256).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pkl", metavar="PATH", help="official StyleGAN-style network pickle")
    source.add_argument("--pth", metavar="PATH", help="official state dict (needs --kind pdfgc|arcface|lpips)")
    parser.add_argument("--out", required=True, metavar="PATH", help="output path; writes PATH.safetensors + PATH.json")
    parser.add_argument(
        "--which", nargs="+", default=["G_ema"], metavar="NAME",
        help="networks to import from --pkl (default: G_ema); several write PATH.NAME.safetensors/.json",
    )
    parser.add_argument(
        "--kind", choices=sorted(set(PICKLE_KINDS) | set(PTH_KEY_LISTS)),
        help="--pth: which weights (required); --pkl: force the model kind when keys cannot tell (psi3d vs psi)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from components.import_official.errors import OfficialImportError
    from components.import_official.importer import import_official, import_state_dict

    if args.pth is not None:
        if args.kind not in PTH_KEY_LISTS:
            raise OfficialImportError(f"--pth needs --kind one of {sorted(PTH_KEY_LISTS)} (got {args.kind})")
        results = [import_state_dict(args.pth, args.out, args.kind)]
    else:
        if args.kind is not None and args.kind not in PICKLE_KINDS:
            raise OfficialImportError(f"--kind {args.kind} is for --pth; with --pkl use one of {PICKLE_KINDS}")
        results = import_official(args.pkl, args.out, which=args.which, kind=args.kind)
    for r in results:
        print(f"{r.name}: {r.kind} ({r.key_list}), {r.n_tensors} tensors -> {r.tensors_path} + {r.sidecar_path.name}")
    return 0
