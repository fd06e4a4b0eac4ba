import pytest

from mim_nnunet.common.atomic import atomic_write, write_json_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = write_json_atomic(tmp_path / "plan.json", {"a": 1})

    def half_write(tmp):
        tmp.write_text('{"a": ')                   # a crash mid-way
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_write)
    assert target.read_text(encoding="utf-8") == '{\n "a": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]
