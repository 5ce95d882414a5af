"""docs/flags.md equals what the stage configs say, and one setting has one spelling across stages."""

from __future__ import annotations

from draftsmith import config, flags_doc


def test_flags_doc_is_current():
    assert flags_doc.DOC.read_text(encoding="utf-8") == flags_doc.render(), \
        "docs/flags.md is stale: run `python -m draftsmith.flags_doc`"


def test_every_stage_has_a_typed_config():
    assert set(flags_doc.stage_configs()) == set(flags_doc.COMMANDS)


def test_one_spelling_per_setting_across_stages():
    table = flags_doc.spellings()
    canonical = set(table)
    for flag, row in table.items():
        # a stage's old spelling is never another stage's current flag
        assert not canonical & set(row["deprecated"]), (flag, row["deprecated"])
    # the same field name is the same flag in every stage
    by_field: dict[str, set[str]] = {}
    for cls in flags_doc.stage_configs().values():
        for spec in config.flags(cls):
            if spec.option.cli and not spec.option.positional:
                by_field.setdefault(spec.path[-1], set()).add(spec.name)
    assert {f: names for f, names in by_field.items() if len(names) > 1} == {}
