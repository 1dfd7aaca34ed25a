"""`python -m nft_trl.embedded [build [--ship]]`: print the embedded model's directory, or build it again.

python -m nft_trl.embedded                # the directory of the embedded model (the shipped build)
python -m nft_trl.embedded build          # the deterministic build, into the cache (a few minutes on 2 cores)
python -m nft_trl.embedded build --ship   # ... and copy it into the package (nft_trl/embedded/pretrained/)
"""

import argparse
import json
import logging

from .model import CACHE_ENV_VAR, MANIFEST_NAME, SHIPPED_DIR, embedded_path, ship


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nft_trl.embedded", description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs="?", choices=["path", "build"], default="path")
    parser.add_argument(
        "--cache_dir", default=None, help=f"cache root (default: ${CACHE_ENV_VAR} or ~/.cache/nft_trl)"
    )
    parser.add_argument("--ship", action="store_true", help=f"with build: copy the build to {SHIPPED_DIR}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.command == "path":
        print(embedded_path(cache_dir=args.cache_dir))
        return
    path = embedded_path(cache_dir=args.cache_dir, rebuild=True, shipped=False)
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    print(
        f"{manifest['num_parameters'] / 1e6:.2f}M parameters, {manifest['steps']} warm-up steps, validation accuracy "
        f"{manifest['history'][-1]['accuracy']:.3f}, built in {manifest['build_seconds']:.0f} s: {path}"
    )
    if args.ship:
        print(f"shipped: {ship(path)}")


if __name__ == "__main__":
    main()
