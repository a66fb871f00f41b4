"""The Streamlit app's pages (`streamlit run app.py`): `analyst` (ask, fix, chart, rate) and `team` (accuracy,
latency and feedback over time). Only app.py imports these; they use the public API, the guarded executor and
the query log (or, with NL2SQL_SERVER, an `nl2sql serve` through nl2sql.client), never model internals."""
