/**
 * Reading the ToolSet file, and following it as it changes. A ConfigMap volume updates by swapping the
 * `..data` symlink; editors and `kubectl cp` replace files by atomic rename. Both are seen by watching
 * the directory and re-reading the file's content, never by trusting event types or inodes. A bad edit
 * keeps the last good ToolSet and says why.
 */
import { EventEmitter } from 'node:events';
import { type FSWatcher, watch } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
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

export async function loadToolSetFile(
  path: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<LoadResult> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    return {
      ok: false,
      issues: [{ path, message: `cannot be read: ${(err as NodeJS.ErrnoException).code ?? err}` }],
    };
  }
  return loadToolSetText(text, env);
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
    this.#reading = this.#reading.then(() => this.#read());
    return this.#reading;
  }

  #schedule(): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => void this.check(), this.debounceMs);
  }

  async #read(): Promise<void> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch {
      return; // mid-swap: the next event re-reads
    }
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
