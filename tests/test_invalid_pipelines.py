"""Invalid pipelines, each paired with the exact lines ``syncengine validate`` must print (exit 2, nothing run).

Every fixture in ``tests/invalid/`` is one small mistake in an otherwise valid pipeline.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import syncengine

FIXTURES = Path(__file__).parent / "invalid"

INVALID: dict[str, list[str]] = {
    'bad_enum.yml': [
        "bad_enum.yml:15:11: syncs.customers.mode: 'upsrt' is not one of 'upsert', 'insert', 'mirror' (did you mean 'upsert'?)",
    ],
    'delete_when_snapshot.yml': [
        'delete_when_snapshot.yml:16:18: syncs.customers.delete_when: delete_when applies to a sync with scope: window and mode: mirror (this one has scope: snapshot, mode: mirror)',
    ],
    'duplicate_key.yml': [
        "duplicate_key.yml:16:5: syncs.customers.mode: duplicate key 'mode'",
    ],
    'key_not_output.yml': [
        "key_not_output.yml:14:10: syncs.customers.key: key field 'customer' is not an output field of the mapping (did you mean 'customer_id'?)",
    ],
    'key_item_type.yml': [
        "key_item_type.yml:14:24: syncs.customers.key[1]: expected text, got a whole number",
    ],
    'mapping_fields_list.yml': [
        "mapping_fields_list.yml:17:15: syncs.customers.mapping.fields: expected a mapping of keys to values, got a list",
    ],
    'mapping_filter_type.yml': [
        "mapping_filter_type.yml:17:15: syncs.customers.mapping.filter: expected text, got a whole number",
    ],
    'many_at_once.yml': [
        "many_at_once.yml:4:11: sources.customers_csv.type: unknown source adapter 'csvv' (did you mean 'csv'?)",
        "many_at_once.yml:15:11: syncs.customers.mode: 'upsrt' is not one of 'upsert', 'insert', 'mirror' (did you mean 'upsert'?)",
        "many_at_once.yml:19:15: syncs.customers.mapping.fields.name: unknown filter 'uper' (did you mean 'upper'?)",
    ],
    'mapping_file_missing.yml': [
        "mapping_file_missing.yml:16:14: syncs.customers.mapping: mapping file 'customer.yml' not found beside the pipeline, in its mappings/ folder, or among the shipped mappings",
    ],
    'missing_required.yml': [
        "missing_required.yml:8:5: destinations.warehouse: missing required key 'path'",
    ],
    'template_syntax.yml': [
        "template_syntax.yml:19:15: syncs.customers.mapping.fields.name: template syntax: unexpected '}'",
    ],
    'unknown_adapter.yml': [
        "unknown_adapter.yml:4:11: sources.customers_csv.type: unknown source adapter 'csvv' (did you mean 'csv'?)",
    ],
    'unknown_adapter_key.yml': [
        "unknown_adapter_key.yml:5:5: sources.customers_csv.pth: unknown key 'pth' (did you mean 'path'?)",
    ],
    'unknown_dest_option.yml': [
        "unknown_dest_option.yml:13:54: syncs.customers.destination.create_tables: unknown key 'create_tables' (did you mean 'create_table'?)",
    ],
    'unknown_filter.yml': [
        "unknown_filter.yml:19:15: syncs.customers.mapping.fields.name: unknown filter 'uper' (did you mean 'upper'?)",
    ],
    'unknown_name.yml': [
        "unknown_name.yml:18:22: syncs.customers.mapping.fields.customer_id: unknown name 'recrd' (did you mean 'record'?); a template can use record, vars, env, run",
    ],
    'unknown_run_field.yml': [
        "unknown_run_field.yml:19:15: syncs.customers.mapping.fields.name: unknown run field 'run.started' (did you mean 'started_at'?)",
    ],
    'unknown_source_ref.yml': [
        "unknown_source_ref.yml:12:13: syncs.customers.source: unknown source 'customer_csv' (did you mean 'customers_csv'?); declared: customers_csv",
    ],
    'unknown_top_key.yml': [
        "unknown_top_key.yml:2:1: sourcs: unknown key 'sourcs' (did you mean 'sources'?)",
        "unknown_top_key.yml:12:13: syncs.customers.source: unknown source 'customers_csv'; no sources are declared",
    ],
    'unknown_var.yml': [
        "unknown_var.yml:19:15: syncs.customers.mapping.fields.name: unknown variable 'vars.suffix'; the pipeline defines no vars",
    ],
    'version.yml': [
        'version.yml:1:10: version: must be 1, not 2',
    ],
    'wrong_type.yml': [
        'wrong_type.yml:16:17: syncs.customers.batch_size: expected a whole number, got text',
    ],
    'yaml_syntax.yml': [
        "yaml_syntax.yml:15:9: YAML syntax: did not find expected ',' or ']'",
    ],
}


def test_every_fixture_has_its_expected_lines() -> None:
    assert sorted(INVALID) == sorted(p.name for p in FIXTURES.glob("*.yml"))
    assert len(INVALID) >= 10


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_pipeline_prints_every_problem_with_its_location(name: str, tmp_path: Path) -> None:
    shutil.copy(FIXTURES / name, tmp_path / name)
    result = syncengine("validate", name, cwd=tmp_path)
    assert result.code == 2
    expected = INVALID[name]
    count = len(expected)
    assert result.err.splitlines() == [*expected, f"{count} problem{'s' if count != 1 else ''} found; nothing was run."]
    # apply refuses the same file the same way, before touching anything.
    applied = syncengine("apply", name, cwd=tmp_path)
    assert applied.code == 2 and applied.err.splitlines()[:count] == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
