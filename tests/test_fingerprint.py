"""One model fingerprint for the probes' representation cache and the Optuna study names."""

from __future__ import annotations

from telly.fingerprint import model_fingerprint


def _model(folder, weights=b"w1"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_retrained_weights_change_the_fingerprint_and_a_copy_elsewhere_keeps_it(tmp_path):
    first = model_fingerprint(str(_model(tmp_path / "a")))
    assert model_fingerprint(str(_model(tmp_path / "a"))) == first  # deterministic
    assert model_fingerprint(str(_model(tmp_path / "a", weights=b"w2"))) != first
    # the path is part of the source string: the same files under another name hash differently,
    # but the same name and files always hash alike
    assert model_fingerprint(str(_model(tmp_path / "b"))) != first


def test_files_beside_the_model_that_are_not_weights_config_or_tokenizer_do_not_count(tmp_path):
    folder = _model(tmp_path / "m")
    before = model_fingerprint(str(folder))
    (folder / "train.log").write_text("step 1")
    assert model_fingerprint(str(folder)) == before
    (folder / "vocab.txt").write_text("a\nb\n")
    assert model_fingerprint(str(folder)) != before


def test_hub_ids_and_the_untrained_twin_hash_by_name(tmp_path):
    folder = _model(tmp_path / "m")
    assert model_fingerprint("microsoft/unixcoder-base") == model_fingerprint("microsoft/unixcoder-base")
    assert model_fingerprint("microsoft/unixcoder-base") != model_fingerprint("microsoft/codebert-base")
    assert model_fingerprint(f"random:{folder}") != model_fingerprint(str(folder))
    assert len(model_fingerprint(str(folder))) == 16
