"""The SQL an administrator runs once to give nl2sql a SELECT-only login.

nl2sql already runs every query in a read-only transaction, but a superuser (PostgreSQL) or a user with the
FILE or SUPER privilege (MariaDB/MySQL) can still read server files or change server settings from inside
one. A role that may only SELECT closes that at the source: with it, the engine holds even if every SQL
check in nl2sql were switched off (tests/safety proves this against real servers).

>>> print("\\n".join(readonly_role_sql("postgres", "nl2sql_ro", database="shop")))
CREATE ROLE "nl2sql_ro" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
ALTER ROLE "nl2sql_ro" SET default_transaction_read_only = on;
ALTER ROLE "nl2sql_ro" SET statement_timeout = '30s';
GRANT CONNECT ON DATABASE "shop" TO "nl2sql_ro";
GRANT USAGE ON SCHEMA "public" TO "nl2sql_ro";
GRANT SELECT ON ALL TABLES IN SCHEMA "public" TO "nl2sql_ro";
ALTER DEFAULT PRIVILEGES IN SCHEMA "public" GRANT SELECT ON TABLES TO "nl2sql_ro";
"""
from __future__ import annotations

import re

from .errors import ConfigError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def _name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigError(f"The {what} {value!r} is not a plain name.",
                          hint="Use letters, digits and underscores, starting with a letter or underscore.")
    return value


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def readonly_role_sql(dialect: str, role: str = "nl2sql_ro", *, database: str, schema: str = "public",
                      password: str | None = None, host: str = "%", statement_timeout_s: int = 30) -> list[str]:
    """Statements that create a login which may only read `database` (PostgreSQL: tables in `schema`).

    Run them as an administrator, then connect nl2sql with that login. Without `password` the login has
    none: set one afterwards (psql: \\password ROLE; MariaDB: ALTER USER ... IDENTIFIED BY ...) unless the
    server authenticates otherwise. Tables created later by the same administrator are readable too
    (PostgreSQL default privileges; MariaDB grants the whole database). Worth doing by hand where it fits
    your other users: PostgreSQL `REVOKE TEMPORARY ON DATABASE ... FROM PUBLIC` (no temp tables at all);
    `statement_timeout_s` is the server-side backstop behind nl2sql's own timeout.
    """
    role = _name(role, "role name")
    database = _name(database, "database name")
    timeout = int(statement_timeout_s)
    if dialect in ("postgres", "postgresql"):
        schema = _name(schema, "schema name")
        pw = f" PASSWORD {_literal(password)}" if password else ""
        return [
            # NOINHERIT: membership granted later does not silently add privileges (e.g. pg_read_server_files)
            f'CREATE ROLE "{role}" LOGIN{pw} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;',
            f'ALTER ROLE "{role}" SET default_transaction_read_only = on;',
            f"ALTER ROLE \"{role}\" SET statement_timeout = '{timeout}s';",
            f'GRANT CONNECT ON DATABASE "{database}" TO "{role}";',
            f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}";',
            f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}";',
            f'ALTER DEFAULT PRIVILEGES IN SCHEMA "{schema}" GRANT SELECT ON TABLES TO "{role}";',
        ]
    if dialect in ("mysql", "mariadb"):
        if not re.match(r"^[A-Za-z0-9_.%:-]{1,255}$", host or ""):
            raise ConfigError(f"The host pattern {host!r} is not valid.", hint="Use '%', 'localhost' or an address.")
        who = f"'{role}'@'{host}'"
        pw = f" IDENTIFIED BY {_literal(password)}" if password else ""
        return [
            f"CREATE USER {who}{pw};",
            # SELECT and SHOW VIEW only: no FILE (LOAD_FILE, INTO OUTFILE), no SUPER (SET GLOBAL), no PROCESS
            f"GRANT SELECT, SHOW VIEW ON `{database}`.* TO {who} WITH MAX_STATEMENT_TIME {timeout};"
            if dialect == "mariadb" else f"GRANT SELECT, SHOW VIEW ON `{database}`.* TO {who};",
        ]
    raise ConfigError(f"No read-only role recipe for {dialect!r}.",
                      hint="SQLite and DuckDB files are opened read-only by nl2sql itself; for others see your "
                           "database's documentation on SELECT-only users.")
