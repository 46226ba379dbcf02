/**
 * The check a model-written statement passes before it is sent: exactly one statement, and that one a
 * plain read (SELECT, WITH … SELECT, VALUES, TABLE). The text is parsed by libpg-query, PostgreSQL's
 * own parser compiled to WebAssembly, so strings, dollar quotes, comments and quoted identifiers are
 * read exactly as the server reads them; a hand-written splitter would be one more dialect to get wrong.
 *
 * This is the first of three layers. The statement also goes over the extended query protocol, where
 * the server itself refuses a second statement, and it runs in a READ ONLY transaction, which is the
 * real guarantee (it also stops a SELECT that calls a function that writes).
 */
import { ToolError } from './types.js';

type Parser = typeof import('libpg-query');

let parser: Promise<Parser> | undefined;

/** Loads the parser (about 2 MB of WebAssembly) once, on first use. */
export function loadSqlParser(): Promise<Parser> {
  parser ??= import('libpg-query').then(async (mod) => {
    await mod.loadModule();
    return mod;
  });
  return parser;
}

/** Statements that change data, wherever they sit (a WITH clause may hold one). */
const WRITES = new Set(['InsertStmt', 'UpdateStmt', 'DeleteStmt', 'MergeStmt']);

/**
 * Functions whose effects a READ ONLY transaction does not stop and a ROLLBACK does not undo, for a role
 * allowed to call them (most need a superuser): server files (lo_export writes one), replication slots
 * and WAL, server control, signals to other sessions, session-level advisory locks, connections of
 * their own (dblink), and those that run SQL given as text, which this check cannot read.
 */
const OUTSIDE_TRANSACTION = new RegExp(
  `^(?:${[
    'lo_(?:export|import)',
    'pg_file_\\w+',
    'pg_read_(?:binary_)?file',
    'pg_ls_\\w+',
    'pg_stat_file',
    'pg_(?:create|drop|copy)_\\w*replication_slot',
    'pg_replication_slot_advance',
    'pg_logical_\\w+',
    'pg_replication_origin_\\w+',
    'pg_sync_replication_slots',
    'pg_reload_conf',
    'pg_rotate_logfile\\w*',
    'pg_promote',
    'pg_switch_wal',
    'pg_create_restore_point',
    'pg_(?:start|stop)_backup',
    'pg_backup_(?:start|stop)',
    'pg_wal_replay_(?:pause|resume)',
    'pg_log_backend_memory_contexts',
    'pg_stat_reset\\w*',
    'pg_stat_statements_reset',
    'pg_(?:cancel|terminate)_backend',
    'pg_(?:try_)?advisory_lock(?:_shared)?',
    'dblink\\w*',
    'query_to_xml\\w*',
    'ts_stat',
    'ts_rewrite',
    // tablefunc's, when the extension is installed.
    'crosstab\\d*',
    'connectby',
  ].join('|')})$`,
  'i',
);

function calledName(call: unknown): string | undefined {
  const parts = (call as { funcname?: { String?: { sval?: string } }[] }).funcname ?? [];
  return parts.at(-1)?.String?.sval;
}

function findWrite(node: unknown): string | undefined {
  if (Array.isArray(node)) {
    for (const item of node) {
      const found = findWrite(item);
      if (found) return found;
    }
    return undefined;
  }
  if (node === null || typeof node !== 'object') return undefined;
  for (const [key, value] of Object.entries(node)) {
    if (WRITES.has(key)) return key.replace(/Stmt$/, '').toUpperCase();
    if (key === 'intoClause') return 'SELECT INTO';
    if (key === 'lockingClause') return 'FOR UPDATE/SHARE';
    if (key === 'FuncCall') {
      const name = calledName(value);
      if (name && OUTSIDE_TRANSACTION.test(name)) return `${name}(), which acts outside the transaction`;
    }
    const found = findWrite(value);
    if (found) return found;
  }
  return undefined;
}

const refused = (message: string) => new ToolError(message, 'ERP_SQL_REFUSED');

/**
 * The most a model-written statement may hold, in UTF-8 bytes. Parsing and walking the tree are
 * synchronous, outside the tool's timeout; a statement a voice assistant needs is a few hundred bytes.
 */
export const MAX_SQL_BYTES = 16 * 1024;

/** Resolves if `sql` is one read-only query; throws a ToolError saying why not. */
export async function checkReadOnlySelect(sql: string): Promise<void> {
  const bytes = sql.length * 3 > MAX_SQL_BYTES ? Buffer.byteLength(sql) : 0;
  if (bytes > MAX_SQL_BYTES) {
    throw new ToolError(
      `the SQL is ${bytes} bytes long, over the limit of ${MAX_SQL_BYTES / 1024} KiB`,
      'ERP_SQL_INVALID',
    );
  }
  const { parse } = await loadSqlParser();
  let stmts: { stmt?: Record<string, unknown> }[];
  try {
    stmts = ((await parse(sql)).stmts ?? []) as typeof stmts;
  } catch (err) {
    throw new ToolError(`the SQL does not parse: ${(err as Error).message}`, 'ERP_SQL_INVALID');
  }
  if (stmts.length === 0) throw new ToolError('no SQL statement was given', 'ERP_SQL_INVALID');
  if (stmts.length > 1) throw refused('only one statement is allowed');
  const stmt = stmts[0]?.stmt ?? {};
  const kind = Object.keys(stmt)[0] ?? 'unknown';
  if (kind !== 'SelectStmt') {
    throw refused(`only a read-only SELECT is allowed (this is ${kind.replace(/Stmt$/, '')})`);
  }
  const write = findWrite(stmt);
  if (write) throw refused(`only a read-only SELECT is allowed (it contains ${write})`);
}
