"""Engine families, one module each, plus the policy for what a user may open.

- `policy`: user-given URLs and paths (known drivers, harmless options, allowed directories).
- `worker`: the child process that runs DuckDB and SQLite queries, so that a query the engine cannot
  interrupt is stopped by killing the process (time and memory limits that really hold).

`nl2sql.warehouse` stays the entry point (`open_warehouse`, the `Warehouse` classes).
"""
