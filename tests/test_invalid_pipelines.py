"""Invalid pipelines, each paired with the exact lines ``syncengine validate`` must print (exit 2, nothing run).

Every fixture in ``tests/invalid/`` is one small mistake in an otherwise valid pipeline, or a malformed
YAML file (bad syntax, tags, aliases, several documents). Generated hostile files are in test_hostile_yaml.py.
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
        "yaml_syntax.yml:14:10: YAML syntax: this '[' is never closed (did not find expected ',' or ']' up to line 15, column 9)",
    ],
    # Hostile or malformed files: each a located error at the right line, never a traceback.
    'anchor_twice.yml': [
        "anchor_twice.yml:9:11: destinations.warehouse.path: anchor '&p' is defined twice (first at line 5)",
    ],
    'bad_indent.yml': [
        'bad_indent.yml:15:4: YAML syntax: did not find expected key',
    ],
    'bad_int.yml': [
        "bad_int.yml:16:17: syncs.customers.batch_size: 'many' is not a valid !!int",
    ],
    'binary_tag.yml': [
        "binary_tag.yml:9:11: destinations.warehouse.path: tag '!!binary' is not allowed (allowed: !!str, !!int, !!float, !!bool, !!null, !!seq, !!map)",
    ],
    'complex_key.yml': [
        'complex_key.yml:15:7: syncs.customers: a key must be text or a number, not a list or a mapping',
    ],
    'custom_tag.yml': [
        "custom_tag.yml:5:11: sources.customers_csv.path: tag '!Ref' is not allowed (allowed: !!str, !!int, !!float, !!bool, !!null, !!seq, !!map)",
    ],
    'document_list.yml': [
        'document_list.yml:1:1: a pipeline must be a mapping of keys to values',
    ],
    'document_scalar.yml': [
        'document_scalar.yml:1:1: a pipeline must be a mapping of keys to values',
    ],
    'duplicate_keys_deep.yml': [
        "duplicate_keys_deep.yml:10:5: destinations.warehouse.type: duplicate key 'type'",
        "duplicate_keys_deep.yml:14:74: syncs.customers.destination.table: duplicate key 'table'",
        "duplicate_keys_deep.yml:21:9: syncs.customers.mapping.fields.name: duplicate key 'name'",
        "duplicate_keys_deep.yml:22:1: destinations: duplicate key 'destinations'",
    ],
    'empty.yml': [
        "empty.yml:1:1: missing required key 'syncs'",
        "empty.yml:1:1: missing required key 'version'",
    ],
    'feilds_inline.yml': [
        "feilds_inline.yml:17:7: syncs.customers.mapping.feilds: unknown key 'feilds' (did you mean 'fields'?)",
    ],
    'huge_float.yml': [
        'huge_float.yml:16:23: syncs.customers.max_delete_share: must be at most 1, not inf',
    ],
    'huge_number.yml': [
        'huge_number.yml:16:17: syncs.customers.batch_size: number too large (5,001 digits)',
    ],
    'key_no_value.yml': [
        'key_no_value.yml:14:9: syncs.customers.key: expected text or a list, got null',
    ],
    'mode_no_value.yml': [
        "mode_no_value.yml:15:10: syncs.customers.mode: no value given; expected one of 'upsert', 'insert', 'mirror'",
    ],
    'merge_key.yml': [
        'merge_key.yml:8:5: destinations.warehouse: YAML merge keys (<<) are not supported; repeat the values',
    ],
    'missing_colon.yml': [
        "missing_colon.yml:15:5: YAML syntax: could not find expected ':' after the key that starts here",
    ],
    'python_apply_list.yml': [
        "python_apply_list.yml:14:10: syncs.customers.key: tag '!!python/object/apply:os.system' is not allowed (allowed: !!str, !!int, !!float, !!bool, !!null, !!seq, !!map)",
    ],
    'python_name.yml': [
        "python_name.yml:15:11: syncs.customers.mode: tag '!!python/name:os.system' is not allowed (allowed: !!str, !!int, !!float, !!bool, !!null, !!seq, !!map)",
    ],
    'recursive_alias.yml': [
        "recursive_alias.yml:14:27: syncs.customers.key[1]: alias '*k' stands inside the value it refers to",
    ],
    'tab_indent.yml': [
        'tab_indent.yml:9:1: YAML syntax: found a tab character that violates indentation',
    ],
    'tag_wrong_kind.yml': [
        "tag_wrong_kind.yml:14:10: syncs.customers.key: tag '!!map' does not fit a list",
    ],
    'two_documents.yml': [
        'two_documents.yml:20:1: a file holds one YAML document; a second one starts here',
    ],
    'unclosed_brace.yml': [
        "unclosed_brace.yml:13:18: YAML syntax: this '{' is never closed (did not find expected ',' or '}' up to line 14, column 8)",
    ],
    'unclosed_bracket.yml': [
        "unclosed_bracket.yml:19:10: YAML syntax: this '[' is never closed (did not find expected ',' or ']' up to line 20, column 1)",
    ],
    'unclosed_quote.yml': [
        'unclosed_quote.yml:18:22: YAML syntax: the quoted text that starts here runs on to line 19; is its closing " missing? (did not find expected key at line 19, column 16)',
    ],
    'unknown_alias.yml': [
        "unknown_alias.yml:14:10: syncs.customers.key: unknown alias '*customer'; an alias must follow its anchor",
    ],
    'unquoted_template.yml': [
        'unquoted_template.yml:19:15: syncs.customers.mapping.fields.name: YAML reads an unquoted {{ ... }} as a mapping; put the template in quotes: "{{ ... }}"',
    ],
    'unquoted_template_text.yml': [
        'unquoted_template_text.yml:19:15: syncs.customers.mapping.fields.name: YAML reads an unquoted {{ ... }} as a mapping; put the template in quotes: "{{ ... }}"',
        'unquoted_template_text.yml:19:34: YAML syntax: did not find expected key; a value starting with {{ must be quoted',
    ],
    'yaml_directive.yml': [
        'yaml_directive.yml:1:1: YAML syntax: found incompatible YAML document (only YAML 1.1 and 1.2 are read)',
    ],
}


def test_every_fixture_has_its_expected_lines() -> None:
    assert sorted(INVALID) == sorted(p.name for p in FIXTURES.glob("*.yml"))
    assert len(INVALID) >= 40


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
