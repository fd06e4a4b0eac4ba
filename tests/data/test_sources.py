"""What -d accepts: collections (complete, short, missing), nnU-Net datasets, folders, datalists."""

import json
import shutil

import pytest

from helpers.commands import run_main
from helpers.synthetic import write_dataset
from helpers.volumes import ct_array, write
from mim_nnunet.data.sources import SourceError, collections_dir, resolve_sources


def fill_1k(root, btcv=24, covid=722, tiny=(4, 4, 4)):
    """The 1k collection's folders with the expected number of (tiny) files."""
    one = write(ct_array(tiny), root / "BTCV" / "imagesTr" / "img0000.nii.gz")
    for i in range(1, btcv):
        shutil.copy(one, root / "BTCV" / "imagesTr" / f"img{i:04d}.nii.gz")
    (root / "TCIA_Covid19").mkdir(parents=True, exist_ok=True)
    for i in range(covid):
        shutil.copy(one, root / "TCIA_Covid19" / f"volume-covid19-A-{i:04d}.nii.gz")


def test_complete_collection(tmp_path, monkeypatch):
    fill_1k(tmp_path)
    monkeypatch.setenv("MIM_DATA_ROOT", str(tmp_path))
    cases = resolve_sources(["1k"])
    assert len(cases) == 746
    assert {c.source for c in cases} == {"BTCV", "TCIA_Covid19"} and {c.modality for c in cases} == {"CT"}


def test_short_or_missing_sources_are_listed_and_allow_partial_proceeds(tmp_path, monkeypatch):
    fill_1k(tmp_path, btcv=20, covid=0)
    shutil.rmtree(tmp_path / "TCIA_Covid19")
    monkeypatch.setenv("MIM_DATA_ROOT", str(tmp_path))
    with pytest.raises(SourceError) as info:
        resolve_sources(["1k"])
    message = str(info.value)
    assert "BTCV" in message and "20 of 24 files" in message and "Synapse" in message
    assert "TCIA_Covid19" in message and "missing" in message and "--allow_partial" in message
    logged = []
    cases = resolve_sources(["1k"], allow_partial=True, log=logged.append)
    assert len(cases) == 20 and len(logged) == 2 and all("--allow_partial" in m for m in logged)


def test_collection_root_unset_is_a_one_line_cli_error(tmp_path, clean_env, monkeypatch, capsys):
    from mim_nnunet.cli.plan import main
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.delenv("MIM_DATA_ROOT", raising=False)
    result = run_main(main, ["-d", "1k"], capsys)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1
    assert lines[0].startswith("mim_plan_and_preprocess: error: MIM_DATA_ROOT is not set")
    # every source with its folder and where to obtain it, as the message for an empty root gives them
    spec = json.loads((collections_dir() / "1k.json").read_text(encoding="utf-8"))
    for source in spec["sources"]:
        assert f"{source['name']}: $MIM_DATA_ROOT/{source['folder']}" in lines[0]
        assert source["obtain"] in lines[0]


def test_nnunet_dataset_folder_and_datalist_combined(tmp_path, nnunet_dirs):
    write_dataset(nnunet_dirs["nnUNet_raw"], 12, num_train=3, num_test=1, shape=(16, 16, 16))
    folder = tmp_path / "scans"
    for i in range(2):
        write(ct_array(), folder / "sub" / f"scan{i}.mha")
    datalist = tmp_path / "list" / "datalist.json"
    write(ct_array(), tmp_path / "list" / "imgs" / "a.nii.gz")
    datalist.write_text(json.dumps({"training": [{"image": "imgs/a.nii.gz", "label": "x"}],
                                    "validation": [{"image": "imgs/a.nii.gz"}]}))
    cases = resolve_sources(["12", str(folder), str(datalist)])
    by_source = {}
    for c in cases:
        by_source.setdefault(c.source, []).append(c)
    assert len(by_source["Dataset012_MiMSynthetic"]) == 4                 # imagesTr + imagesTs, labels ignored
    assert len(by_source["scans"]) == 2 and len(by_source["datalist"]) == 2
    assert all(f.endswith("_0000.nii.gz") for c in by_source["Dataset012_MiMSynthetic"] for f in c.files)
    assert by_source["datalist"][0].files[0] == str((tmp_path / "list" / "imgs" / "a.nii.gz").resolve())
    with pytest.raises(SourceError, match="not a collection"):
        resolve_sources(["no_such_thing"])


def test_a_datalist_naming_missing_files_is_one_line_or_skipped(tmp_path):
    write(ct_array(), tmp_path / "imgs" / "a.nii.gz")
    datalist = tmp_path / "dl.json"
    datalist.write_text(json.dumps({"training": [{"image": "imgs/a.nii.gz"}, {"image": "imgs/gone.nii.gz"},
                                                 {"image": ["imgs/a.nii.gz", "imgs/gone2.nii.gz"]}]}))
    gone = [str((tmp_path / "imgs" / n).resolve()) for n in ("gone.nii.gz", "gone2.nii.gz")]
    with pytest.raises(SourceError) as info:
        resolve_sources([str(datalist)])
    assert str(info.value) == (f"{datalist}: names 2 missing file(s): training[1].image {gone[0]}, "
                               f"training[2].image[1] {gone[1]} (--allow_partial skips them)")
    said = []
    cases = resolve_sources([str(datalist)], allow_partial=True, log=said.append)
    assert [c.files for c in cases] == [(str((tmp_path / "imgs" / "a.nii.gz").resolve()),)]
    assert said == [f"{datalist}: skipping 2 missing file(s): training[1].image {gone[0]}, "
                    f"training[2].image[1] {gone[1]}"]
    datalist.write_text("{not json")
    with pytest.raises(SourceError, match=r"dl\.json: not a JSON datalist \("):
        resolve_sources([str(datalist)])


@pytest.mark.parametrize("items, message", [
    ([{"image": 5}], r'training\[0\]\.image is a number \(5\); expected a file path string'),
    ([{"image": "imgs/a.nii.gz"}, {"image": None}], r"training\[1\]\.image is null"),
    ([{"image": []}], r"training\[0\]\.image is a list \(\[\]\); expected .*non-empty list"),
    ([{"image": ["imgs/a.nii.gz", 3]}], r"training\[0\]\.image\[1\] is a number \(3\)"),
    ([{"image": ""}], r"training\[0\]\.image is an empty string"),
    ([{"label": "imgs/a.nii.gz"}], r'training\[0\] has no "image" field'),
    ([7], r"training\[0\] is a number \(7\); expected an object"),
    ([{"image": "imgs/a.nii.gz", "modality": 3}], r"training\[0\]\.modality is a number \(3\)"),
])
def test_a_malformed_datalist_item_is_one_line_naming_its_index_and_field(tmp_path, items, message):
    write(ct_array(), tmp_path / "imgs" / "a.nii.gz")
    datalist = tmp_path / "dl.json"
    datalist.write_text(json.dumps({"training": items}))
    with pytest.raises(SourceError, match=message) as info:
        resolve_sources([str(datalist)])
    assert str(info.value).startswith(f"{datalist}: ") and "\n" not in str(info.value)


def test_a_malformed_datalist_item_through_the_cli_is_one_line(tmp_path, clean_env, monkeypatch, capsys):
    from mim_nnunet.cli.plan import main
    datalist = tmp_path / "dl.json"
    datalist.write_text(json.dumps({"training": [{"image": 5}]}))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    result = run_main(main, ["-d", datalist], capsys)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "training[0].image is a number (5)" in lines[0]
