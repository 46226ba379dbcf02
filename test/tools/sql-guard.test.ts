/**
 * The one-SELECT check on its own (no database): it reads SQL as PostgreSQL does, so quoting and
 * comments never hide or invent a statement boundary.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { checkReadOnlySelect } from '../../src/tools/sql-guard.js';
import { ToolError } from '../../src/tools/types.js';

async function verdict(sql: string): Promise<string> {
  try {
    await checkReadOnlySelect(sql);
    return 'ok';
  } catch (err) {
    if (!(err instanceof ToolError)) throw err;
    return `${err.code}: ${err.message}`;
  }
}

describe('checkReadOnlySelect', () => {
  it.each([
    'SELECT 1',
    "select * from t where a = ';'",
    "SELECT E'\\'; DROP TABLE t; --'",
    'SELECT $$ ; DROP TABLE t; $$',
    'SELECT $body$ $$ ; $$ $body$',
    'SELECT "weird;name" FROM "t;u"',
    'SELECT 1 -- ; DROP TABLE t',
    '/* ; DROP TABLE t; */ SELECT 1',
    '/* nested /* ; */ still a comment ; */ SELECT 1',
    'SELECT 1;',
    '  SELECT 1 ;  -- trailing',
    'WITH a AS (SELECT 1) SELECT * FROM a',
    'VALUES (1), (2)',
    'TABLE t',
    '(SELECT 1) UNION (SELECT 2)',
    'SELECT 1 AS "DELETE", \'UPDATE t SET a = 1\' AS b',
    'SELECT lo_export, pg_advisory_lock FROM t',
    'SELECT pg_advisory_xact_lock(1), lo_get(42)',
  ])('accepts %j', async (sql) => {
    expect(await verdict(sql)).toBe('ok');
  });

  it.each([
    ['SELECT 1; SELECT 2', 'ERP_SQL_REFUSED: only one statement is allowed'],
    ["SELECT ';'; DROP TABLE t", 'ERP_SQL_REFUSED: only one statement is allowed'],
    ['SELECT $$;$$; DROP TABLE t', 'ERP_SQL_REFUSED: only one statement is allowed'],
    ['SELECT 1 /* ; */; DELETE FROM t', 'ERP_SQL_REFUSED: only one statement is allowed'],
    ['DELETE FROM t', 'ERP_SQL_REFUSED: only a read-only SELECT is allowed (this is Delete)'],
    ['copy t to stdout', 'ERP_SQL_REFUSED: only a read-only SELECT is allowed (this is Copy)'],
    [
      'WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d',
      'ERP_SQL_REFUSED: only a read-only SELECT is allowed (it contains DELETE)',
    ],
    [
      'SELECT * FROM (VALUES (1)) v WHERE EXISTS (WITH i AS (INSERT INTO t VALUES (1) RETURNING 1) SELECT 1 FROM i)',
      'ERP_SQL_REFUSED: only a read-only SELECT is allowed (it contains INSERT)',
    ],
    [
      'SELECT * INTO t2 FROM t',
      'ERP_SQL_REFUSED: only a read-only SELECT is allowed (it contains SELECT INTO)',
    ],
    [
      'SELECT * FROM t FOR SHARE',
      'ERP_SQL_REFUSED: only a read-only SELECT is allowed (it contains FOR UPDATE/SHARE)',
    ],
    ...[
      ["SELECT lo_export(42, '/tmp/x')", 'lo_export'],
      ["SELECT pg_catalog.pg_create_physical_replication_slot('s')", 'pg_create_physical_replication_slot'],
      ["SELECT * FROM dblink_exec('dbname=shop', 'DELETE FROM t')", 'dblink_exec'],
      ['SELECT count(*) FILTER (WHERE pg_advisory_lock(1) IS NULL) FROM t', 'pg_advisory_lock'],
      ['SELECT U&"lo\\005fexport"(42, \'/tmp/x\')', 'lo_export'],
      ["SELECT query_to_xml('SELECT lo_export(42, ''/tmp/x'')', true, true, '')", 'query_to_xml'],
      [
        "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, ''b''::tsquery FROM dblink(''h'', ''x'') t(a tsquery)')",
        'ts_rewrite',
      ],
      ["SELECT * FROM crosstab('SELECT lo_export(42, ''/tmp/x'')') AS c(a int)", 'crosstab'],
      ['SELECT pg_terminate_backend(pid) FROM pg_stat_activity', 'pg_terminate_backend'],
      ["SELECT PG_LOGICAL_EMIT_MESSAGE(false, 'p', 'm')", 'pg_logical_emit_message'],
    ].map(([sql, name]) => [
      sql as string,
      `ERP_SQL_REFUSED: only a read-only SELECT is allowed (it contains ${name}(), which acts outside the transaction)`,
    ]),
    ['', 'ERP_SQL_INVALID: the SQL does not parse: Query cannot be empty'],
    ['-- nothing but a comment', 'ERP_SQL_INVALID: no SQL statement was given'],
    [
      "SELECT 'unterminated",
      'ERP_SQL_INVALID: the SQL does not parse: unterminated quoted string at or near "\'unterminated"',
    ],
  ])('refuses %j', async (sql, expected) => {
    expect(await verdict(sql)).toBe(expected);
  });

  it('refuses a statement over 16 KiB before parsing it', async () => {
    const select = `SELECT ${Array(9000).fill('1').join(',')}`;
    expect(await verdict(select)).toBe(
      `ERP_SQL_INVALID: the SQL is ${select.length} bytes long, over the limit of 16 KiB`,
    );
    // Counted in bytes: 6,000 three-byte characters are 18,000 bytes.
    expect(await verdict(`SELECT '${'€'.repeat(6000)}'`)).toMatch(
      /^ERP_SQL_INVALID: the SQL is 18009 bytes long/,
    );
    expect(await verdict(`SELECT ${Array(8000).fill('1').join(',')}`)).toBe('ok');
  });

  it('a string literal holding anything at all is one statement', async () => {
    await fc.assert(
      fc.asyncProperty(fc.string({ unit: 'grapheme' }), async (text) => {
        fc.pre(!text.includes('\0'));
        const literal = `'${text.replaceAll("'", "''")}'`;
        expect(await verdict(`SELECT ${literal} AS a; `)).toBe('ok');
        expect(await verdict(`SELECT ${literal}; DROP TABLE t`)).toBe(
          'ERP_SQL_REFUSED: only one statement is allowed',
        );
      }),
      { numRuns: 300 },
    );
  });

  it('a dollar-quoted body or a comment holding anything at all hides nothing', async () => {
    await fc.assert(
      fc.asyncProperty(fc.string(), async (text) => {
        fc.pre(!text.includes('\0') && !text.includes('$q$') && !text.includes('*/') && !text.includes('/*'));
        expect(await verdict(`SELECT $q$${text}$q$ /* ${text} */`)).toBe('ok');
      }),
      { numRuns: 300 },
    );
  });
});
