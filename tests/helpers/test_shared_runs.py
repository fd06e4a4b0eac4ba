import pytest

from helpers.shared_runs import pretraining_files_moved_away


def test_pretraining_files_are_away_in_the_block_and_back_after_it_even_on_failure(tmp_path):
    folders = [tmp_path / "results" / "MiM_pre", tmp_path / "preprocessed" / "MiM_pre"]
    for i, folder in enumerate(folders):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "f.txt").write_text(str(i), encoding="utf-8")
    with pretraining_files_moved_away(folders, tmp_path / "aside"):
        assert not any(f.exists() for f in folders)
    assert [(f / "sub" / "f.txt").read_text(encoding="utf-8") for f in folders] == ["0", "1"]
    with pytest.raises(RuntimeError):
        with pretraining_files_moved_away(folders, tmp_path / "aside2"):
            raise RuntimeError("a prediction failed")
    assert all((f / "sub" / "f.txt").is_file() for f in folders)
