"""`python -m nft_trl.embedded [build [--ship]]`: print the embedded model's directory, or build it again.

python -m nft_trl.embedded                # the directory of the embedded model (the shipped build)
python -m nft_trl.embedded build          # the deterministic build, into the cache (a few minutes on 2 cores)
python -m nft_trl.embedded build --ship   # ... and copy it into the package (nft_trl/embedded/pretrained/)
python -m nft_trl.embedded build --task countdown --seed 2   # another build: the countdown preset, build seed 2
"""

import argparse
import json
import logging

from .config import TASKS, EmbeddedConfig
from .model import CACHE_ENV_VAR, MANIFEST_NAME, SHIPPED_DIR, embedded_path, ship


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nft_trl.embedded", description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs="?", choices=["path", "build"], default="path")
    parser.add_argument(
        "--cache_dir", default=None, help=f"cache root (default: ${CACHE_ENV_VAR} or ~/.cache/nft_trl)"
    )
    parser.add_argument("--ship", action="store_true", help=f"with build: copy the build to {SHIPPED_DIR}")
    parser.add_argument("--task", choices=TASKS, default="addition", help="the task (countdown: its preset)")
    parser.add_argument("--seed", type=int, default=None, help="build seed (default: the preset's, 1)")
    args = parser.parse_args(argv)
    overrides = {} if args.seed is None else {"seed": args.seed}
    config = EmbeddedConfig.countdown(**overrides) if args.task == "countdown" else EmbeddedConfig(**overrides)
    if args.ship and config != EmbeddedConfig():
        parser.error("--ship copies the default build only (no --task countdown, no --seed).")
    logging.basicConfig(level=logging.INFO)
    if args.command == "path":
        print(embedded_path(cache_dir=args.cache_dir, config=config))
        return
    path = embedded_path(cache_dir=args.cache_dir, rebuild=True, config=config, shipped=False)
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    print(
        f"{manifest['num_parameters'] / 1e6:.2f}M parameters, {manifest['steps']} warm-up steps, validation accuracy "
        f"{manifest['history'][-1]['accuracy']:.3f}, built in {manifest['build_seconds']:.0f} s: {path}"
    )
    if args.ship:
        print(f"shipped: {ship(path)}")


if __name__ == "__main__":
    main()
