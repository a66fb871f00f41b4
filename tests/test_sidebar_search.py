"""The app's schema browser on large schemas: a search box, and never 1,000 expanders at once (Streamlit AppTest,
a real DuckDB file of 300 tables through the app's own connection picker)."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from nl2sql.ui.session import PIPELINE_KEY
from nl2sql.ui.sidebar import PAGE

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def _browser_of_1000_tables():
    from nl2sql.schema import Column, Schema, Table
    from nl2sql.ui.sidebar import schema_browser
    def third(i):  # one table has a column with a comment to find
        return Column("amount", "DOUBLE", comment="in euros") if i == 421 else Column("x", "DOUBLE")
    tables = tuple(Table(f"t_{i:04d}", (Column("id", "INTEGER", True), Column(f"col{i % 7}", "VARCHAR"), third(i)))
                   for i in range(1000))
    schema_browser(Schema("big", "duckdb", tables))


def labels(at):
    return [e.label for e in at.sidebar.expander]


def test_a_thousand_tables_render_one_page_and_search_finds_tables_and_columns():
    at = AppTest.from_function(_browser_of_1000_tables, default_timeout=60)
    at.run()
    assert not at.exception
    assert len(labels(at)) == PAGE and labels(at)[0] == "t_0000 (3)"
    assert any("Showing 25 of 1000 tables" in c.value for c in at.sidebar.caption)
    at.sidebar.button(key="schema_more").click().run()
    assert len(labels(at)) == 2 * PAGE
    at.sidebar.text_input(key="schema_search").input("t_0042").run()
    assert labels(at) == ["t_0042 (3)"]
    at.sidebar.text_input(key="schema_search").input("EUROS").run()  # a column comment, any case
    assert labels(at) == ["t_0421 (3)"]
    at.sidebar.text_input(key="schema_search").input("col3").run()  # a column name: 143 tables, one page
    assert len(labels(at)) == PAGE and all(label.startswith("t_") for label in labels(at))
    assert any("of 143 matching tables" in c.value for c in at.sidebar.caption)
    at.sidebar.text_input(key="schema_search").input("nothing like this").run()
    assert labels(at) == [] and any("No table or column matches" in c.value for c in at.sidebar.caption)
    assert not at.exception


@pytest.fixture(scope="module")
def wide_duckdb(tmp_path_factory):
    import duckdb
    path = tmp_path_factory.mktemp("wide") / "wide.duckdb"
    con = duckdb.connect(str(path))
    for i in range(300):
        con.execute(f"CREATE TABLE t_{i:04d} (id INTEGER PRIMARY KEY, col{i % 10} VARCHAR)")
    con.execute("CREATE TABLE suppliers (supplier_id INTEGER PRIMARY KEY, name VARCHAR)")
    con.execute("COMMENT ON COLUMN suppliers.name IS 'Legal name of the supplier'")
    con.execute("INSERT INTO suppliers VALUES (1, 'Acme')")
    con.close()
    return path


def test_app_on_a_300_table_file_shows_a_page_and_finds_a_table(fake_pipeline, settings, tmp_path, wide_duckdb):
    pipe = fake_pipeline()
    pipe.settings = settings.replace(query_log=str(tmp_path / "querylog.sqlite"))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state[PIPELINE_KEY] = pipe
    at.run()
    at.sidebar.radio(key="conn_kind").set_value("DuckDB or SQLite file").run()
    at.sidebar.text_input(key="conn_path").input(str(wide_duckdb)).run()
    assert not at.exception and not at.error
    assert len(labels(at)) == PAGE
    at.sidebar.text_input(key="schema_search").input("legal name").run()
    assert labels(at) == ["suppliers (2)"]
    [df] = at.sidebar.dataframe
    assert df.value.loc[df.value["column"] == "name", "sample values"].item() == "Acme"
