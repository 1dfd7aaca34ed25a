"""`nft_trl.gguf`: the command line refuses bad input with one line, and a conversion parses the file once and loads
what transformers loads (on a tiny GGUF file written here; SmolLM2's real file: tests/test_real_model.py)."""

import pytest

from nft_trl.gguf import main


def test_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="^ERROR: No GGUF file at .*no-such-model.gguf"):
        main(["no-such-model.gguf", "out"])
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    (tmp_path / "taken").mkdir()
    with pytest.raises(SystemExit, match="^ERROR: taken exists already: give a new folder"):
        main(["model.gguf", "taken"])
    with pytest.raises(SystemExit) as usage:
        main([])
    assert usage.value.code == 2 and "give a GGUF file and a new folder, or --smollm2" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def write_tiny_llama(path, vocab=32, hidden=16, ffn=32, layers=2, heads=2):
    """A llama GGUF file of random float32 weights with a byte-level BPE vocabulary of 32 tokens."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_block_count(layers)
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    tokens = ["<s>", "</s>"] + [chr(ord("a") + i) for i in range(26)] + ["ab", "abc", "Ġ", "Ġa"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3] + [1] * (len(tokens) - 2))
    writer.add_token_merges(["a b", "ab c", "Ġ a"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    rng = np.random.default_rng(0)
    shapes = {"token_embd": (vocab, hidden), "output_norm": (hidden,), "output": (vocab, hidden)}
    for i in range(layers):
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            shapes[f"blk.{i}.{name}"] = (hidden, hidden)
        shapes |= {f"blk.{i}.ffn_gate": (ffn, hidden), f"blk.{i}.ffn_up": (ffn, hidden)}
        shapes |= {f"blk.{i}.ffn_down": (hidden, ffn), f"blk.{i}.attn_norm": (hidden,), f"blk.{i}.ffn_norm": (hidden,)}
    for name, shape in shapes.items():
        writer.add_tensor(f"{name}.weight", rng.standard_normal(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_conversion_parses_the_file_once_and_loads_what_transformers_loads(tmp_path, monkeypatch):
    """transformers alone parses a GGUF file once for the config and once more for the weights; `convert_gguf`
    shares one parse, writes the same weights and tokenizer, and leaves the `gguf` package as it found it."""
    gguf = pytest.importorskip("gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nft_trl.gguf import convert_gguf

    write_tiny_llama(tmp_path / "tiny.gguf")
    parses = []
    real_reader = gguf.GGUFReader

    def counting_reader(path, *args, **kwargs):
        parses.append(path)
        return real_reader(path, *args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", counting_reader)
    name_map = gguf.get_tensor_name_map
    convert_gguf(tmp_path / "tiny.gguf", tmp_path / "converted")
    assert len(parses) == 1
    assert gguf.GGUFReader is counting_reader and gguf.get_tensor_name_map is name_map

    parses.clear()
    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf", dtype=torch.float32)
    assert len(parses) >= 2  # what the shared parse saves (if transformers ever parses once, this test says so)
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "converted")
    expected, got = direct.state_dict(), converted.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    text = "abc a cab"
    assert (
        AutoTokenizer.from_pretrained(tmp_path / "converted")(text).input_ids
        == AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")(text).input_ids
    )
