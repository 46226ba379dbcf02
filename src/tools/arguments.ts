/**
 * Arguments as the model wrote them → a checked object, or a short problem the model can act on.
 * Each tool's `parameters` schema is compiled (ajv, first error) on the tool's first call (registry.ts).
 */
import type { Ajv, ErrorObject } from 'ajv';
import { createAjv, pointerToPath, quadraticUniqueItems } from '../toolset/validate.js';
import { describeBytes } from './http-limits.js';

export type ParsedArguments = { ok: true; args: Record<string, unknown> } | { ok: false; problem: string };

/**
 * The most one call's argument text may hold, in UTF-8 bytes. Parsing, the schema check and the SQL check
 * run synchronously, outside the tool's timeout: this bounds them. A voice tool's arguments are a few
 * hundred bytes.
 */
export const MAX_ARGUMENT_BYTES = 64 * 1024;

/** Empty or blank text means no arguments; anything else must be a JSON object of at most MAX_ARGUMENT_BYTES. */
export function parseArguments(text: string): ParsedArguments {
  const bytes = text.length * 3 > MAX_ARGUMENT_BYTES ? Buffer.byteLength(text) : 0;
  if (bytes > MAX_ARGUMENT_BYTES) {
    return {
      ok: false,
      problem: `they are ${bytes} bytes long, over the limit of ${describeBytes(MAX_ARGUMENT_BYTES)}`,
    };
  }
  if (text.trim() === '') return { ok: true, args: {} };
  let value: unknown;
  let infinite = false;
  try {
    value = JSON.parse(text, (_key, v: unknown) => {
      if (typeof v === 'number' && !Number.isFinite(v)) infinite = true;
      return v;
    });
  } catch (err) {
    return { ok: false, problem: `they are not valid JSON (${(err as Error).message})` };
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return { ok: false, problem: 'they must be a JSON object' };
  }
  // 1e400 parses to Infinity, which JSON (and so the cache key) writes as null: -1e400 would share its entry.
  if (infinite) return { ok: false, problem: 'they hold a number too large to represent' };
  return { ok: true, args: value as Record<string, unknown> };
}

/** Returns a sentence naming the fields that are wrong, or undefined when the arguments fit. */
export type ArgumentCheck = (args: Record<string, unknown>) => string | undefined;

/** Compiles a tool's schema into its check. */
export type ArgumentCompiler = (
  parameters: Record<string, unknown>,
  onUnusable: (problem: string) => void,
) => ArgumentCheck;

/**
 * A compiler for one batch of schemas. ajv keeps everything it compiled for as long as the instance
 * lives, and removeSchema does not let all of it go, so each batch has an instance of its own, dropped
 * with the checks it made. A schema the validator cannot compile (an MCP server may send anything), or
 * one it would check in quadratic time, is reported through `onUnusable` and then checks nothing, so the
 * tool stays callable. A check stops at the first error: collecting every error of hostile arguments
 * (one per array item) costs far more than checking them.
 */
export function createArgumentCompiler(): ArgumentCompiler {
  let ajv: Ajv | undefined;
  return (parameters, onUnusable) => {
    ajv ??= createAjv({ allErrors: false, lean: true });
    // $schema and $id name a draft or register a global id; neither matters for one tool's arguments.
    const { $schema: _schema, $id: _id, ...schema } = parameters;
    const quadratic = quadraticUniqueItems(schema);
    if (quadratic !== undefined) {
      onUnusable(`${quadratic.at || 'the schema'} ${quadratic.problem}`);
      return () => undefined;
    }
    let validate: ReturnType<Ajv['compile']>;
    try {
      validate = ajv.compile(schema);
    } catch (err) {
      onUnusable((err as Error).message);
      return () => undefined;
    }
    return (args) => (validate(args) ? undefined : describeErrors(validate.errors ?? []));
  };
}

const MAX_PROBLEMS = 6;

function describeErrors(errors: ErrorObject[]): string {
  const problems = new Set<string>();
  for (const e of errors) {
    const at = pointerToPath(e.instancePath);
    const field = (name: unknown) => (at ? `${at}.${String(name)}` : String(name));
    const p = e.params as Record<string, unknown>;
    if (e.keyword === 'required') problems.add(`${field(p.missingProperty)} is required`);
    else if (e.keyword === 'additionalProperties')
      problems.add(`${field(p.additionalProperty)} is not allowed`);
    else if (e.keyword === 'enum') {
      const allowed = (p.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ');
      problems.add(`${at || 'the arguments'} must be one of ${allowed}`);
    } else problems.add(`${at || 'the arguments'} ${e.message ?? `fail ${e.keyword}`}`);
  }
  return [...problems].slice(0, MAX_PROBLEMS).join('; ');
}
