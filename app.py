"""nl2sql analyst app (first cut): ask a question of the demo warehouse or any database, see the SQL and the result.

Run with `streamlit run app.py`. Uses the public API only. The full analyst app (editable SQL, charts,
history, feedback into the query log) is its own issue.
"""
import streamlit as st

import nl2sql

st.set_page_config(page_title="nl2sql", layout="wide")
st.title("nl2sql")
db = st.sidebar.text_input("Database (SQLAlchemy URL or .duckdb/.sqlite path; empty = demo warehouse)", "") or None
question = st.chat_input("Ask a question about your data")
if question:
    st.chat_message("user").write(question)
    with st.chat_message("assistant"):
        try:
            with st.spinner("Writing SQL…"):
                answer = nl2sql.ask(question, db=db)
        except nl2sql.Nl2SqlError as e:
            st.error(str(e))
        else:
            if answer.sql:
                st.code(answer.sql, language="sql")
            if answer.error:
                st.error(answer.error)
            elif answer.df is not None:
                st.dataframe(answer.df, use_container_width=True)
                if answer.truncated:
                    st.caption("Truncated at the row limit (NL2SQL_ROW_LIMIT).")
            st.caption(f"{answer.timings.get('total', 0):.2f} s · model {answer.model} · adapter {answer.adapter}")
