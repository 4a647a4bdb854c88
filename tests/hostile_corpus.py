"""Hostile model-written SQL (issue 17): writes, escapes, memory and CPU bombs, slow built-ins.

Shared by ``tests/test_hostile.py`` and ``benchmarks/bench_hostile.py``. Every case runs on a
scratch database made by :data:`SETUP`; whatever a case does, the sandbox must return within the
deadline plus the executor's grace, the process memory must stay bounded, and no database file
may change. ``{tmp}`` in a case is replaced by the database's folder.

Kinds: ``write`` (must be refused), ``escape`` (ATTACH, PRAGMA, extensions, VACUUM: refused),
``memory`` (must end as an error or within bounds), ``cpu`` and ``slow_builtin`` (must end by the
deadline: the slow built-ins are single SQLite steps that SQLite's progress handler cannot stop,
so only the executor's hard deadline does).
"""

from __future__ import annotations

SETUP = """
CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT);
CREATE INDEX t_b ON t (b);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200)
INSERT INTO t SELECT x, 'v' || x FROM c;
CREATE VIEW v AS SELECT a FROM t;
"""

_INF = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
_BIG = "hex(zeroblob(4000000))"  # an 8 MB string of '0'

WRITE = [
    "INSERT INTO t VALUES (1000, 'x')",
    "INSERT INTO t VALUES (1001, 'x') RETURNING *",
    "INSERT OR REPLACE INTO t VALUES (1, 'x')",
    "REPLACE INTO t VALUES (1, 'x')",
    "REPLACE INTO t VALUES (2, 'y') RETURNING a",
    "INSERT INTO t VALUES (1, 'x') ON CONFLICT(a) DO UPDATE SET b = 'z'",
    "UPDATE t SET b = 'x'",
    "UPDATE t SET b = 'x' RETURNING *",
    "UPDATE OR REPLACE t SET a = 1",
    "DELETE FROM t",
    "DELETE FROM t RETURNING *",
    "WITH x AS (SELECT 5000 AS a, 'w') INSERT INTO t SELECT * FROM x",
    "WITH x AS (SELECT 1) DELETE FROM t WHERE a IN (SELECT * FROM x)",
    "WITH x AS (SELECT 1) UPDATE t SET b = 'c' WHERE a IN (SELECT * FROM x)",
    "WITH x AS (DELETE FROM t RETURNING a) SELECT * FROM x",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 9) INSERT INTO t(b) SELECT x FROM c",
    "INSERT INTO v VALUES (3)",
    "DROP TABLE t",
    "DROP TABLE IF EXISTS t",
    "DROP VIEW v",
    "DROP INDEX t_b",
    "CREATE TABLE u (x)",
    "CREATE TABLE IF NOT EXISTS u AS SELECT * FROM t",
    "CREATE TEMP TABLE u (x)",
    "CREATE TEMP VIEW w AS SELECT 1",
    "CREATE INDEX i2 ON t (a, b)",
    "CREATE VIRTUAL TABLE f USING fts5(x)",
    "CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM t; END",
    "ALTER TABLE t ADD COLUMN c",
    "ALTER TABLE t RENAME TO t2",
    "ALTER TABLE t RENAME COLUMN b TO c",
    "ALTER TABLE t DROP COLUMN b",
    "SELECT 1; DROP TABLE t",
    "SELECT a FROM t; DELETE FROM t;",
    "BEGIN IMMEDIATE",
    "BEGIN EXCLUSIVE",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT s",
    "RELEASE s",
    "REINDEX t_b",
    "ANALYZE",
]

ESCAPE = [
    "ATTACH DATABASE '{tmp}/attached.sqlite' AS x",
    "ATTACH '{tmp}/attached2.sqlite' AS x",
    "attach database ':memory:' as m",
    "ATTACH 'file:{tmp}/uri.sqlite?mode=rwc' AS y",
    "ATTACH 'file:{tmp}/db.sqlite?mode=rw' AS rw",
    "ATTACH printf('%s/p.sqlite', '{tmp}') AS z",
    "/* c */ ATTACH '' AS e",
    'ATTACH "{tmp}/q.sqlite" AS "q"',
    "DETACH DATABASE main",
    "DETACH temp",
    "PRAGMA journal_mode = WAL",
    "PRAGMA main.journal_mode = DELETE",
    "pragma QUERY_ONLY = 0",
    "PRAGMA query_only = OFF",
    "PRAGMA writable_schema = 1",
    "PRAGMA writable_schema = RESET",
    "PRAGMA user_version = 7",
    "PRAGMA schema_version = 1",
    "PRAGMA application_id = 3",
    "PRAGMA temp_store_directory = '{tmp}'",
    "PRAGMA mmap_size = 1000000000",
    "PRAGMA cache_size = -10000000",
    "PRAGMA hard_heap_limit = 0",
    "PRAGMA soft_heap_limit = 0",
    "PRAGMA locking_mode = EXCLUSIVE",
    "PRAGMA trusted_schema = 1",
    "PRAGMA wal_checkpoint(TRUNCATE)",
    "PRAGMA optimize",
    "PRAGMA incremental_vacuum",
    "PRAGMA integrity_check",
    "PRAGMA table_info(t)",
    "SELECT * FROM pragma_table_info('t')",
    "SELECT * FROM pragma_database_list",
    "SELECT * FROM pragma_compile_options",
    "SELECT * FROM main.pragma_index_list('t')",
    "VACUUM",
    "VACUUM main",
    "VACUUM INTO '{tmp}/copy.sqlite'",
    "VACUUM main INTO '{tmp}/copy2.sqlite'",
    "SELECT load_extension('x')",
    "SELECT load_extension('/tmp/evil.so', 'init')",
    "select LOAD_EXTENSION('libc.so.6')",
    "SELECT \"load_extension\"('x')",
    "SELECT fts3_tokenizer('simple')",
    "SELECT readfile('/etc/passwd')",
    "SELECT writefile('{tmp}/w.txt', 'x')",
    "SELECT * FROM sqlite_dbpage",
]

MEMORY = [
    "SELECT randomblob(1000000000)",
    "SELECT zeroblob(200000000)",
    "SELECT printf('%.*c', 70000000, 'x')",
    "SELECT randomblob(60000000), randomblob(60000000), randomblob(60000000), randomblob(60000000)",
    "SELECT hex(randomblob(30000000)), hex(randomblob(30000000)), hex(randomblob(30000000))",
    _INF + "SELECT x, randomblob(30000000) FROM c",
    _INF + "SELECT x, hex(zeroblob(20000000)) FROM c",
    _INF + "SELECT * FROM c",
    _INF + "SELECT group_concat(x) FROM c",
    _INF + "SELECT group_concat(hex(randomblob(1000))) FROM c",
    _INF + "SELECT x FROM c ORDER BY random()",
    _INF + "SELECT DISTINCT x FROM c",
    "SELECT * FROM t a, t b, t c, t d",
    "SELECT a.b || b.b || c.b FROM t a, t b, t c",
    "SELECT length(replace(hex(zeroblob(30000000)), '0', 'ab'))",
    "SELECT length(replace(hex(zeroblob(8000000)), '00', '000'))",
    "SELECT json_group_array(x) FROM (" + _INF + "SELECT x FROM c)",
]

CPU = [
    _INF + "SELECT count(*) FROM c",
    _INF + "SELECT max(x) FROM c",
    "SELECT count(*) FROM t a, t b, t c, t d, t e",
    "SELECT count(*) FROM t a, t b, t c, t d WHERE a.b LIKE '%' || d.b || '%'",
    _INF + "SELECT sum(length(printf('%0100d', x))) FROM c",
    "WITH RECURSIVE f(n, a, b) AS (SELECT 0, 0, 1 UNION ALL SELECT n + 1, b, a + b FROM f) SELECT max(n) FROM f",
    "SELECT count(*) FROM (" + _INF + "SELECT x FROM c) GROUP BY x % 7",
]

SLOW_BUILTIN = [
    "SELECT printf('%.*c', 2147483647, 'x')",
    "SELECT length(printf('%.*c', 2147483647, 'x'))",
    "SELECT printf('%2147483647c', 'x')",
    "SELECT instr(" + _BIG + ", hex(zeroblob(200000)) || '1')",
    "SELECT instr(" + _BIG + ", hex(zeroblob(1000000)) || '1')",
    "SELECT length(trim(hex(zeroblob(20000000)), hex(zeroblob(400000)) || 'x'))",
    "SELECT length(ltrim(hex(zeroblob(20000000)), hex(zeroblob(400000)) || 'x'))",
    "SELECT length(rtrim(hex(zeroblob(20000000)), hex(zeroblob(400000)) || 'x'))",
    "SELECT " + _BIG + " LIKE '%' || hex(zeroblob(20000)) || '1%'",
    "SELECT " + _BIG + " GLOB '*' || hex(zeroblob(20000)) || '1*'",
    "SELECT hex(zeroblob(20000000)) LIKE '%0%0%0%0%0%0%0%0%0%0%0%0%0%0%0%0%0%0%1'",
    "SELECT hex(zeroblob(20000000)) GLOB '*0*0*0*0*0*0*0*0*0*0*0*0*0*0*0*0*0*1'",
    "SELECT length(replace(hex(zeroblob(30000000)), '0', ''))",
    "SELECT length(replace(replace(replace(hex(zeroblob(10000000)), '0', '00'), '0', '00'), '00', '0'))",
    "SELECT length(upper(hex(zeroblob(30000000)))) + length(lower(hex(zeroblob(30000000))))",
]

CASES: list[tuple[str, str]] = (
    [("write", s) for s in WRITE]
    + [("escape", s) for s in ESCAPE]
    + [("memory", s) for s in MEMORY]
    + [("cpu", s) for s in CPU]
    + [("slow_builtin", s) for s in SLOW_BUILTIN]
)
