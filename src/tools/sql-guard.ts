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
    const found = findWrite(value);
    if (found) return found;
  }
  return undefined;
}

const refused = (message: string) => new ToolError(message, 'ERP_SQL_REFUSED');

/** Resolves if `sql` is one read-only query; throws a ToolError saying why not. */
export async function checkReadOnlySelect(sql: string): Promise<void> {
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
