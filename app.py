"""nl2sql analyst app: `streamlit run app.py`.

Ask questions of the demo warehouse or your own database, read and fix the SQL, chart the result, and rate
answers into the query log (NL2SQL_QUERY_LOG); the data team's page shows accuracy, latency and feedback.
The pages live in nl2sql/ui/.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub at run time
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import streamlit as st  # noqa: E402

from nl2sql.ui import analyst, team  # noqa: E402

st.set_page_config(page_title="nl2sql", page_icon=":material/database:", layout="wide")
st.navigation([
    st.Page(analyst.render, title="Ask", icon=":material/chat:", url_path="ask", default=True),
    st.Page(team.render, title="Data team", icon=":material/monitoring:", url_path="team"),
]).run()
