"""`nft_trl.gguf`'s command line refuses bad input with one line (the conversion itself: tests/test_real_model.py)."""

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
