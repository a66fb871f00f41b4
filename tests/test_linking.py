"""Schema linking (nl2sql/linking.py) on every Spider schema, on train questions, and on synthetic wide schemas
with cryptic names; the disk cache and its rebuild when the schema changes."""
from __future__ import annotations

import json

import pytest
import sqlglot
from sqlglot import exp

from conftest import SPIDER
from nl2sql import linking
from nl2sql.linking import Linked, SchemaIndex
from nl2sql.schema import Column, ForeignKey, Schema, Table, from_spider


@pytest.fixture(scope="module")
def spider_schemas():
    return {e["db_id"]: from_spider(e) for e in json.loads((SPIDER / "tables.json").read_text())}


@pytest.fixture(autouse=True)
def fresh_memory():
    linking.clear_memory_cache()
    yield
    linking.clear_memory_cache()


def components(schema: Schema) -> dict[str, int]:
    """Connected component (FK graph, undirected) of every table, by lower-case name."""
    names = [t.name.lower() for t in schema.tables]
    parent = {n: n for n in names}

    def find(n):
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n
    for t in schema.tables:
        for fk in t.foreign_keys:
            if fk.ref_table.lower() in parent:
                parent[find(t.name.lower())] = find(fk.ref_table.lower())
    roots = {}
    return {n: roots.setdefault(find(n), len(roots)) for n in names}


def assert_well_formed(full: Schema, linked: Linked):
    kept = [t.name.lower() for t in linked.schema.tables]
    assert kept, "never an empty schema"
    assert len(set(kept)) == len(kept)
    assert set(kept) == {n.lower() for n in linked.tables}
    for t in linked.schema.tables:
        original = full.table(t.name)
        assert original is not None
        assert {c.name for c in t.columns} <= {c.name for c in original.columns}
        for fk in t.foreign_keys:  # no foreign key may point outside the subset
            assert fk.ref_table.lower() in kept
    # kept tables that are connected in the full schema are connected in the pruned one
    full_comp, sub_comp = components(full), components(linked.schema)
    for a in kept:
        for b in kept:
            if full_comp[a] == full_comp[b]:
                assert sub_comp[a] == sub_comp[b], (a, b)


def test_every_spider_schema_prunes_to_a_connected_deterministic_subset(spider_schemas):
    for db, schema in spider_schemas.items():
        index = SchemaIndex.build(schema)
        for question in (f"How many {schema.tables[-1].name.replace('_', ' ')} are there?",
                         "List the names and the dates of everything, ordered by the most recent one.",
                         "Hello?"):
            linked = index.prune(question, max_tables=3, passthrough=False)
            assert_well_formed(schema, linked)
            again = SchemaIndex(schema, "other", *linking._documents(schema, {})).prune(
                question, max_tables=3, passthrough=False)
            assert again.tables == linked.tables and again.schema == linked.schema
        whole = index.prune("How many rows?")  # as the pipeline calls it
        small = (len(schema.tables) <= linking.PASSTHROUGH_TABLES
                 and schema.column_count <= linking.PASSTHROUGH_COLUMNS)
        assert whole.pruned is not small
        if small:
            assert whole.schema is schema


def gold_tables(sql: str, schema: Schema) -> set[str]:
    tree = sqlglot.parse_one(sql, read="sqlite")
    return {t.name.lower() for t in tree.find_all(exp.Table) if schema.table(t.name) is not None}


def test_gold_tables_of_train_questions_are_kept(spider_schemas):
    train = json.loads((SPIDER / "train_spider.json").read_text())[::20]  # 350 questions, every database's share
    missed, forced_hits, forced_total = [], 0, 0
    for ex in train:
        schema = spider_schemas[ex["db_id"]]
        gold = gold_tables(ex["query"], schema)
        index = SchemaIndex.build(schema)
        kept = {t.name.lower() for t in index.prune(ex["question"]).schema.tables}
        if not gold <= kept:
            missed.append((ex["question"], gold - kept))
        forced = {t.name.lower() for t in index.prune(ex["question"], max_tables=4, passthrough=False).schema.tables}
        forced_hits += len(gold & forced)
        forced_total += len(gold)
    assert not missed, missed
    assert forced_hits / forced_total >= 0.95  # even cut to 4 tables, almost every gold table stays


def wide_schema(n_tables=320, n_cols=10) -> Schema:
    tables = []
    for i in range(n_tables):
        cols = [Column("id", "INTEGER", True)] + [Column(f"col{j}", "VARCHAR") for j in range(1, n_cols)]
        fks = (ForeignKey("col1", f"t_{i - 1:04d}", "id"),) if i % 40 else ()  # chains of 40 tables
        tables.append(Table(f"t_{i:04d}", tuple(cols), "", fks))
    return Schema("wide", "duckdb", tuple(tables))


def test_synthetic_wide_schema_with_cryptic_names():
    schema = wide_schema()
    index = SchemaIndex.build(schema)
    linked = index.prune("What is col7 of t_0042 for id 3?", max_tables=5)
    assert linked.pruned and linked.tables[0] == "t_0042"
    assert_well_formed(schema, linked)
    linked = index.prune("Join t_0042 with t_0045", max_tables=2)
    assert {"t_0042", "t_0045"} <= set(linked.tables)
    assert {"t_0043", "t_0044"} <= set(linked.path_tables)  # the FK path between them
    assert_well_formed(schema, linked)
    linked = index.prune("Join t_0001 with t_0300", max_tables=2)  # different chains: no path to add
    assert linked.tables == ["t_0001", "t_0300"] and not linked.path_tables
    # 19 tables apart on one chain: the second is left out rather than pulling in the whole chain
    linked = index.prune("Join t_0010 with t_0030", max_tables=2)
    assert linked.tables[0] in ("t_0010", "t_0030") and not {"t_0010", "t_0030"} <= set(linked.tables)
    assert len(linked.tables) <= 2 + linking.MAX_PATH_TABLES
    assert_well_formed(schema, linked)


def test_a_question_naming_no_table_still_gets_the_best_few():
    schema = wide_schema()
    linked = SchemaIndex.build(schema).prune("Tell me something interesting, please!")
    assert 1 <= len(linked.schema.tables) <= linking.MIN_TABLES
    assert_well_formed(schema, linked)


def test_a_very_wide_table_keeps_its_keys_and_best_columns():
    wide = Table("events", (Column("event_id", "INTEGER", True), Column("user_ref", "INTEGER"))
                 + tuple(Column(f"metric_{j}", "DOUBLE") for j in range(300)) + (Column("revenue_eur", "DOUBLE"),),
                 "", (ForeignKey("user_ref", "users", "user_id"),))
    users = Table("users", (Column("user_id", "INTEGER", True), Column("country", "VARCHAR")))
    others = tuple(Table(f"misc_{i}", (Column("id", "INTEGER", True),)) for i in range(20))
    schema = Schema("w", "duckdb", (wide, users) + others)
    linked = SchemaIndex.build(schema).prune("Total revenue eur of events by user country", max_tables=2)
    events = linked.schema.table("events")
    names = {c.name for c in events.columns}
    assert {"event_id", "user_ref", "revenue_eur"} <= names
    assert len(events.columns) <= linking.WIDE_TABLE_COLUMNS
    assert [c.name for c in events.columns] == [c.name for c in wide.columns if c.name in names]  # order kept
    assert linked.schema.table("users") is not None


def test_column_budget_limits_the_subset():
    schema = wide_schema()
    linked = SchemaIndex.build(schema).prune("col1 col2 col3 t_0001 t_0002 t_0003 t_0100 t_0200", max_tables=8,
                                             max_prompt_columns=25)
    assert 1 <= len(linked.schema.tables) and linked.schema.column_count <= 25


def test_same_table_name_in_two_schemas_stays_distinct():
    orders = (Column("order_id", "INTEGER", True), Column("amount", "DOUBLE"))
    tables = [Table("sales.orders", orders), Table("archive.orders", orders, "orders before 2020")]
    tables += [Table(f"other_{i}", (Column("id", "INTEGER", True),)) for i in range(20)]
    schema = Schema("pg", "postgres", tuple(tables))
    linked = SchemaIndex.build(schema).prune("archive orders amount", max_tables=2)
    assert linked.tables[0] == "archive.orders" and "sales.orders" in linked.tables
    assert linked.scores["archive.orders"] > linked.scores["sales.orders"]


def test_widen_adds_the_table_holding_a_name_outside_the_subset():
    schema = wide_schema()
    index = SchemaIndex.build(schema)
    linked = index.prune("col7 of t_0042", max_tables=1)
    assert linked.tables == ["t_0042"]
    wider = index.widen(linked, ["t_0045"])
    assert wider.widened and {"t_0042", "t_0045", "t_0043", "t_0044"} <= set(wider.tables)
    assert_well_formed(schema, wider)
    assert index.widen(linked, ["no_such_name"]).tables == ["t_0042"]


def test_extra_text_finds_a_cryptic_table():
    schema = wide_schema(60)
    plain = SchemaIndex.build(schema).prune("Which suppliers are late?", max_tables=1)
    glossary = {"t_0033": "suppliers and their delivery delays", "t_0033.col4": "days late"}
    linked = SchemaIndex.build(schema, extra=glossary).prune("Which suppliers are late?", max_tables=1)
    assert linked.tables == ["t_0033"] and plain.tables != ["t_0033"]


def test_disk_cache_is_reused_and_rebuilt_when_the_schema_changes(settings, tmp_path):
    settings = settings.replace(cache_dir=tmp_path)
    schema = wide_schema(30)
    SchemaIndex.build(schema, settings)
    [path] = (tmp_path / "linking").glob("*.json")
    # mark the cached file: an index read back from disk finds the marker
    data = json.loads(path.read_text())
    data["tables"][7].append("zebra")
    path.write_text(json.dumps(data))
    linking.clear_memory_cache()
    assert SchemaIndex.build(schema, settings).prune("zebra", max_tables=1).tables == ["t_0007"]
    # the schema changes (one more column): a new index, a second file, no marker
    changed = Schema(schema.name, schema.dialect, schema.tables[:7] + (
        Table("t_0007", schema.tables[7].columns + (Column("added", "INTEGER"),), "", schema.tables[7].foreign_keys),)
        + schema.tables[8:])
    linking.clear_memory_cache()
    index = SchemaIndex.build(changed, settings)
    assert index.prune("zebra", max_tables=1).scores["t_0007"] < 0.01
    assert len(list((tmp_path / "linking").glob("*.json"))) == 2
    # a damaged file is rebuilt and rewritten, not an error
    path.write_text("{not json")
    linking.clear_memory_cache()
    assert SchemaIndex.build(schema, settings).prune("t_0003", max_tables=1).tables == ["t_0003"]
    assert json.loads(path.read_text())["version"] == linking.INDEX_VERSION
    assert not list((tmp_path / "linking").glob(".tmp-*"))  # atomic writes leave no temporary files
    # a file of the right key but the wrong shape is rebuilt too
    data = json.loads(path.read_text())
    data["tables"][0] = 42
    path.write_text(json.dumps(data))
    linking.clear_memory_cache()
    assert SchemaIndex.build(schema, settings).prune("t_0004", max_tables=1).tables == ["t_0004"]
    # an unwritable cache directory costs a rebuild, not an error
    linking.clear_memory_cache()
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    index = SchemaIndex.build(schema, settings.replace(cache_dir=blocked))
    assert index.prune("t_0005", max_tables=1).tables == ["t_0005"]


def test_a_budget_smaller_than_the_best_table_narrows_it():
    wide = Table("events", (Column("event_id", "INTEGER", True),) + tuple(Column(f"m{j}", "DOUBLE") for j in range(30))
                 + (Column("revenue", "DOUBLE"),))
    misc = tuple(Table(f"misc_{i}", (Column("id", "INTEGER", True),)) for i in range(20))
    schema = Schema("w", "duckdb", (wide,) + misc)
    linked = SchemaIndex.build(schema).prune("revenue of events", max_prompt_columns=5)
    assert linked.tables[0] == "events" and linked.schema.column_count <= 5
    assert {"event_id", "revenue"} <= {c.name for c in linked.schema.table("events").columns}


def test_outside_names_finds_what_the_model_used_beyond_the_subset():
    schema = wide_schema()
    index = SchemaIndex.build(schema)
    linked = index.prune("col7 of t_0042", max_tables=1)
    assert index.outside_names("SELECT col7 FROM t_0042", linked) == []
    assert index.outside_names("SELECT a.col7 FROM t_0042 AS a JOIN t_0045 AS b ON a.id = b.col1", linked) == ["t_0045"]
    assert index.outside_names("SELECT nosuch FROM t_0042", linked) == []  # not in the full schema either
    assert index.outside_names("SELECT FROM WHERE (", linked) == []
    wider = index.widen(linked, index.outside_names("SELECT * FROM t_0045", linked))
    assert "t_0045" in wider.tables
    # a column kept out of a very wide table is named, and widen leaves the table as it is (already kept)
    wide = Table("events", (Column("event_id", "INTEGER", True),) + tuple(Column(f"m{j}", "DOUBLE") for j in range(60)))
    s2 = Schema("w", "duckdb", (wide,) + tuple(Table(f"misc_{i}", (Column("id", "INTEGER", True),)) for i in range(20)))
    i2 = SchemaIndex.build(s2)
    l2 = i2.prune("m3 of events", max_tables=1)
    assert i2.outside_names("SELECT m59 FROM events", l2) == ["m59"]
    back = i2.widen(l2, ["m59"])
    assert back.widened and back.schema.table("events").column("m59") is not None
    assert i2.widen(l2, ["events.m58"]).schema.table("events").column("m58") is not None


def test_value_hints_bring_the_table_holding_a_mentioned_value():
    from nl2sql.values import ValueHint
    schema = wide_schema(60)
    index = SchemaIndex.build(schema)
    question = "What did Lucas Mancini buy?"
    assert "t_0017" not in index.prune(question, max_tables=3).tables
    hint = ValueHint("t_0017", "col5", "Lucas Mancini", 100.0, "Lucas Mancini")
    linked = index.prune(question, max_tables=3, value_hints=[hint])
    assert linked.tables[0] == "t_0017"
    unknown = ValueHint("no_such_table", "x", "y", 100.0, "y")
    without = index.prune(question, max_tables=3).tables
    assert index.prune(question, max_tables=3, value_hints=[unknown]).tables == without


def test_a_value_hint_keeps_its_column_in_a_narrowed_table():
    from nl2sql.values import ValueHint
    metrics = tuple(Column(f"m{j}", "VARCHAR") for j in range(60))
    wide = Table("events", (Column("event_id", "INTEGER", True),) + metrics)
    misc = tuple(Table(f"misc_{i}", (Column("id", "INTEGER", True),)) for i in range(20))
    index = SchemaIndex.build(Schema("w", "duckdb", (wide,) + misc))
    hint = ValueHint("events", "m57", "Berlin", 90.0, "berlin")
    linked = index.prune("events in berlin", max_tables=1, value_hints=[hint])
    assert linked.schema.table("events").column("m57") is not None
    assert index.widen(linked, ["misc_3"]).schema.table("events").column("m57") is not None
