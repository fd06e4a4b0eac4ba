"""scripts/label_efficiency.py: the splits of the 25/50/100 % protocol."""

from helpers.commands import load_script


def load():
    return load_script("label_efficiency")


def test_fractions_are_nested_seeded_subsets_with_a_validation_case():
    le = load()
    cases = [f"c{i}" for i in range(10)]
    splits = le.fraction_splits(cases, (0.25, 0.5, 1.0), seed=3)
    assert [len(s["train"]) for s in splits] == [3, 5, 10]                 # ceil(2.5), 5, 10
    assert set(splits[0]["train"]) <= set(splits[1]["train"]) <= set(splits[2]["train"])
    for s in splits[:2]:
        assert sorted(s["train"] + s["val"]) == cases                        # the rest validates
    assert len(splits[2]["val"]) == 1 and splits[2]["val"][0] in cases     # 100 %: one case validates
    assert splits == le.fraction_splits(cases, (0.25, 0.5, 1.0), seed=3)
    assert splits != le.fraction_splits(cases, (0.25, 0.5, 1.0), seed=4)
    assert [len(s["train"]) for s in le.fraction_splits(["a", "b"], (0.25, 1.0))] == [1, 2]
