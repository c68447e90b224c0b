"""One way to read settings: typed coercion, unknown keys, ranges and files, every refusal naming what is wrong."""

from dataclasses import dataclass

import pytest

from circuitlab import settings
from circuitlab.settings import SettingsError, build, coerce, parse_overrides, read_mapping


@dataclass
class Toy:
    steps: int = 10
    lr: float = 0.01
    fast: bool = False
    name: str = "toy"
    threads: int | None = None
    betas: tuple[float, float] = (0.9, 0.95)

    def __post_init__(self) -> None:
        settings.coerce_fields(self)
        problems = [] if self.betas[0] <= self.betas[1] else [f"betas={self.betas!r} must be increasing"]
        settings.check(self, {"steps": settings.at_least(1), "lr": settings.between(0, 1, open_low=True)}, problems)


@pytest.mark.parametrize(
    ("text", "annotation", "value"),
    [
        ("1e-3", float, 0.001),  # PyYAML reads this as text
        ("2", float, 2.0),
        ("1e3", int, 1000),
        ("  42 ", int, 42),
        ("yes", bool, True),
        ("FALSE", bool, False),
        ("0", bool, False),
        ("null", int | None, None),
        ("None", int | None, None),
        ("none", str | None, "none"),  # text stays text
        ("123", str, "123"),
        ("[0.8, 0.9]", tuple[float, float], (0.8, 0.9)),
        ("[1, 2, 3]", list[int], [1, 2, 3]),
    ],
)
def test_text_is_coerced_by_the_annotation(text, annotation, value):
    result = coerce(text, annotation, "field")
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize(
    ("value", "annotation", "message"),
    [
        ("maybe", bool, r"skip='maybe' is not a boolean: write true or false"),
        (2, bool, r"skip=2 is not a boolean"),
        ("2.5", int, r"skip=2.5 is not a whole number"),
        (2.5, int, r"skip=2.5 is not a whole number"),
        (True, int, r"skip=True is not a whole number"),
        ("abc", float, r"skip='abc' is not a finite number: write it like 0.01 or 1e-2"),
        ("nan", float, r"skip=.*nan.* is not a finite number"),
        (float("inf"), float, r"skip=inf is not a finite number"),
        (3, str, r"skip=3 is not text: write it in quotes"),
        ("x", int | None, r"skip='x' is not a whole number: write an integer such as 100, or null"),
        ("[1]", tuple[float, float], r"skip=\[1\] has 1 items: it takes exactly 2"),
        ("[1, a]", tuple[float, float], r"skip\[1\]='a' is not a finite number"),
        ("0.9", tuple[float, float], r"skip=0.9 is not a list"),
    ],
)
def test_bad_values_are_refused_with_the_field_and_the_value(value, annotation, message):
    with pytest.raises(SettingsError, match=message):
        coerce(value, annotation, "skip")


def test_build_coerces_checks_ranges_and_names_the_source():
    toy = build(Toy, {"steps": "5", "lr": "1e-3", "fast": "yes", "betas": [0.1, 0.2]}, source="toy.yaml")
    assert toy == Toy(steps=5, lr=0.001, fast=True, betas=(0.1, 0.2))
    with pytest.raises(SettingsError, match=r"toy.yaml: unknown Toy field\(s\) \['step'\]. Valid fields: steps, lr"):
        build(Toy, {"step": 5}, source="toy.yaml")
    with pytest.raises(SettingsError, match=r"toy.yaml: expected a mapping of Toy fields .* found list \[1, 2\]"):
        build(Toy, [1, 2], source="toy.yaml")
    with pytest.raises(SettingsError, match=r"toy.yaml: Invalid Toy: steps=0 must be at least 1; lr=2.0 must be in"):
        build(Toy, {"steps": 0, "lr": 2}, source="toy.yaml")
    with pytest.raises(SettingsError, match=r"toy.yaml: Invalid Toy: .*betas=\(0.9, 0.1\) must be increasing"):
        build(Toy, {"betas": [0.9, 0.1]}, source="toy.yaml")
    with pytest.raises(SettingsError, match=r"Invalid Toy: steps='many' is not a whole number: write .*; fast='maybe'"):
        Toy(steps="many", fast="maybe")  # every bad field at once, from Python too


def test_overrides_are_typed_and_checked_one_by_one():
    assert parse_overrides(Toy, ["steps=50", "lr=1e-3", "fast=1", "threads=null"]) == {
        "steps": 50,
        "lr": 0.001,
        "fast": True,
        "threads": None,
    }
    assert parse_overrides(Toy, ["train.steps=3"], prefix="train.") == {"steps": 3}
    with pytest.raises(SettingsError, match=r"--set fast=maybe: fast='maybe' is not a boolean"):
        parse_overrides(Toy, ["fast=maybe"])
    with pytest.raises(SettingsError, match=r"--set speed=2: unknown Toy field\(s\) \['speed'\]. Valid fields"):
        parse_overrides(Toy, ["speed=2"])
    with pytest.raises(SettingsError, match=r"--set 'steps': write FIELD=VALUE, e.g. steps=..."):
        parse_overrides(Toy, ["steps"])
    with pytest.raises(SettingsError, match=r"write train.FIELD=VALUE"):
        parse_overrides(Toy, ["model.steps=3"], prefix="train.")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("empty.yaml", "", r"empty.yaml is empty"),
        ("comments.yaml", "# nothing here\n", r"comments.yaml is empty"),
        ("list.yaml", "- steps: 3\n", r"list.yaml holds a list .* not a mapping of settings"),
        ("scalar.yaml", "steps\n", r"scalar.yaml holds a str .* not a mapping"),
        ("broken.yaml", "steps: [1, 2\n", r"broken.yaml is not valid YAML"),
        ("broken.json", "{not json", r"broken.json is not valid JSON"),
    ],
)
def test_files_that_hold_no_settings_are_refused(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(SettingsError, match=message):
        read_mapping(tmp_path / name)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(SettingsError, match=r"nowhere.yaml: no such file"):
        read_mapping(tmp_path / "nowhere.yaml")
