/**
 * Reading the ToolSet file, and following it as it changes. A ConfigMap volume updates by swapping the
 * `..data` symlink; editors and `kubectl cp` replace files by atomic rename. Both are seen by watching
 * the directory and re-reading the file's content, never by trusting event types or inodes. A bad edit
 * keeps the last good ToolSet and says why.
 */
import { EventEmitter } from 'node:events';
import { constants, type FSWatcher, watch } from 'node:fs';
import { open, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { stringify } from 'yaml';
import { MAX_TOOLSET_BYTES, toolSetDocument } from './api.js';
import { type ResolvedToolSet, resolveToolSet } from './defaults.js';
import { type Issue, parseToolSet } from './validate.js';
import { unresolvableValues } from './values.js';

export type LoadResult =
  | { ok: true; toolset: ResolvedToolSet; text: string }
  | { ok: false; issues: Issue[] };

/** Parses, validates and resolves a ToolSet for the proxy: values must resolve in this environment. */
export function loadToolSetText(text: string, env: NodeJS.ProcessEnv = process.env): LoadResult {
  const parsed = parseToolSet(text);
  if (!parsed.ok) return parsed;
  const unresolved = unresolvableValues(parsed.toolset, env);
  if (unresolved.length) return { ok: false, issues: unresolved };
  return { ok: true, toolset: resolveToolSet(parsed.toolset), text };
}

/** `missing`: there is no file at the path (a rename or symlink swap in progress, perhaps). */
export type ReadResult = { ok: true; text: string } | { ok: false; issue: Issue; missing: boolean };

/** Writes the ToolSet `name` with `spec` as `toolset.yaml` in `dir` (the demo, the benchmark); returns its path. */
export async function writeToolSetFile(dir: string, name: string, spec: unknown): Promise<string> {
  const path = join(dir, 'toolset.yaml');
  await writeFile(path, stringify(toolSetDocument(name, spec)));
  return path;
}

/**
 * Reads a ToolSet file: a regular file of at most MAX_TOOLSET_BYTES (what the operator renders at most). The open does not block, so a
 * FIFO or device put in the file's place is refused at once instead of holding a thread forever.
 */
export async function readToolSetFile(path: string): Promise<ReadResult> {
  const refuse = (message: string, missing = false): ReadResult => ({
    ok: false,
    issue: { path, message },
    missing,
  });
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return refuse(`cannot be read: ${code ?? err}`, code === 'ENOENT');
  }
  try {
    const info = await handle.stat();
    if (!info.isFile()) return refuse('is not a regular file');
    // Read one byte past the limit rather than trust the size: the file may grow while it is read.
    const buffer = Buffer.alloc(MAX_TOOLSET_BYTES + 1);
    let length = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, null);
      if (bytesRead === 0) break;
      length += bytesRead;
      if (length > MAX_TOOLSET_BYTES) return refuse(`is larger than ${MAX_TOOLSET_BYTES / 1024} KiB`);
    }
    return { ok: true, text: buffer.toString('utf8', 0, length) };
  } catch (err) {
    return refuse(`cannot be read: ${(err as NodeJS.ErrnoException).code ?? err}`);
  } finally {
    await handle.close();
  }
}

export async function loadToolSetFile(
  path: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<LoadResult> {
  const read = await readToolSetFile(path);
  if (!read.ok) return { ok: false, issues: [read.issue] };
  return loadToolSetText(read.text, env);
}

export interface ToolSetWatcherEvents {
  change: [toolset: ResolvedToolSet];
  rejected: [issues: Issue[]];
}

/**
 * Emits `change` with each new valid ToolSet and `rejected` with the issues of an invalid one (the
 * current one stays). Content that did not change emits nothing.
 */
export class ToolSetWatcher extends EventEmitter<ToolSetWatcherEvents> {
  #watcher: FSWatcher | undefined;
  #timer: NodeJS.Timeout | undefined;
  #lastText: string;
  /** The last reason the file could not be read, so a lasting one is reported once. */
  #lastProblem: string | undefined;
  #reading: Promise<void> = Promise.resolve();

  constructor(
    readonly path: string,
    initialText: string,
    private readonly env: NodeJS.ProcessEnv = process.env,
    private readonly debounceMs = 100,
  ) {
    super();
    this.#lastText = initialText;
  }

  start(): this {
    // `..data` swaps report the symlink's name and renames may report a temp file, so any event in the
    // directory re-reads; unchanged content is ignored in #read.
    this.#watcher = watch(dirname(this.path), () => this.#schedule());
    this.#watcher.on('error', () => this.#schedule());
    return this;
  }

  /** Re-reads now; resolves when done. Tests and SIGHUP use it. */
  check(): Promise<void> {
    // A read that throws must not end the chain: every later check would be skipped.
    this.#reading = this.#reading.then(() =>
      this.#read().catch((err: unknown) => {
        this.emit('rejected', [{ path: this.path, message: `cannot be loaded: ${(err as Error).message}` }]);
      }),
    );
    return this.#reading;
  }

  #schedule(): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => void this.check(), this.debounceMs);
  }

  async #read(): Promise<void> {
    const read = await readToolSetFile(this.path);
    if (!read.ok) {
      // Missing is a swap in progress (the next event re-reads); anything else is reported, once.
      if (read.missing || this.#lastProblem === read.issue.message) return;
      this.#lastProblem = read.issue.message;
      this.emit('rejected', [read.issue]);
      return;
    }
    this.#lastProblem = undefined;
    const text = read.text;
    if (text === this.#lastText) return;
    this.#lastText = text;
    const result = loadToolSetText(text, this.env);
    if (result.ok) this.emit('change', result.toolset);
    else this.emit('rejected', result.issues);
  }

  close(): void {
    clearTimeout(this.#timer);
    this.#watcher?.close();
  }
}
