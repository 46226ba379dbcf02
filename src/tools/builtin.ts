/**
 * Builtin tools: `time` and `calculator`. Each has its own fixed argument schema and a default
 * description; the calculator is a small recursive-descent parser (never eval or Function).
 */
import type { BuiltinName } from '../toolset/schema.js';
import { ToolError, type ToolExecutor } from './types.js';

export interface BuiltinDefinition {
  description: string;
  parameters: Record<string, unknown>;
}

export const BUILTINS: Record<BuiltinName, BuiltinDefinition> = {
  time: {
    description: 'The current date and time, optionally in an IANA time zone such as Europe/Paris.',
    parameters: {
      type: 'object',
      properties: {
        timezone: {
          type: 'string',
          description: "IANA time zone such as Europe/Paris or America/New_York; default: the server's zone.",
        },
      },
    },
  },
  calculator: {
    description:
      'Evaluates an arithmetic expression: + - * / % ^, parentheses, sqrt, abs, round, floor, ceil, min, max, pi.',
    parameters: {
      type: 'object',
      properties: {
        expression: { type: 'string', description: 'For example (12.5 * 4) / 3 or sqrt(2) ^ 2.' },
      },
      required: ['expression'],
    },
  },
};

export function createBuiltinExecutor(name: BuiltinName, options: { now?: () => number } = {}): ToolExecutor {
  const now = options.now ?? Date.now;
  switch (name) {
    case 'time':
      return { run: async (args) => currentTime(now(), optionalString(args.timezone, 'timezone')) };
    case 'calculator':
      return { run: async (args) => calculate(requiredString(args.expression, 'expression')) };
  }
}

function optionalString(value: unknown, name: string): string | undefined {
  if (value === undefined || value === null || value === '') return undefined;
  if (typeof value !== 'string') throw new ToolError(`${name} must be a string`, 'ERP_TOOL_ARGUMENT');
  return value;
}

function requiredString(value: unknown, name: string): string {
  const text = optionalString(value, name);
  if (text === undefined) throw new ToolError(`${name} is required`, 'ERP_TOOL_ARGUMENT');
  return text;
}

// ---------------------------------------------------------------------------------------------- time

export interface TimeResult {
  /** ISO 8601 local date-time with its UTC offset, such as 2025-03-09T14:05:00+01:00. */
  datetime: string;
  weekday: string;
  timezone: string;
}

export function currentTime(epochMs: number, timezone?: string): TimeResult {
  let format: Intl.DateTimeFormat;
  try {
    format = new Intl.DateTimeFormat('en-US', {
      timeZone: timezone,
      weekday: 'long',
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
      hourCycle: 'h23',
      timeZoneName: 'longOffset',
    });
  } catch {
    throw new ToolError(
      `unknown time zone "${timezone}"; use an IANA name such as Europe/Paris`,
      'ERP_TOOL_TIMEZONE',
    );
  }
  const part: Partial<Record<Intl.DateTimeFormatPartTypes, string>> = {};
  for (const p of format.formatToParts(epochMs)) part[p.type] = p.value;
  // longOffset reads "GMT+05:30", or just "GMT" at UTC+0.
  const offset = (part.timeZoneName ?? 'GMT').replace(/^GMT/, '') || '+00:00';
  return {
    datetime: `${part.year}-${part.month}-${part.day}T${part.hour}:${part.minute}:${part.second}${offset}`,
    weekday: part.weekday ?? '',
    // The name as asked: ICU may resolve it to a legacy alias (Asia/Kathmandu → Asia/Katmandu).
    timezone: timezone ?? format.resolvedOptions().timeZone,
  };
}

// ---------------------------------------------------------------------------------------- calculator

const MAX_EXPRESSION_LENGTH = 500;
const MAX_NESTING = 64;

// Maps, not object literals: a name such as "constructor" must not find Object.prototype.
const FUNCTIONS = new Map<string, { arity: [number, number]; fn: (...xs: number[]) => number }>([
  ['sqrt', { arity: [1, 1], fn: Math.sqrt }],
  ['abs', { arity: [1, 1], fn: Math.abs }],
  ['round', { arity: [1, 1], fn: Math.round }],
  ['floor', { arity: [1, 1], fn: Math.floor }],
  ['ceil', { arity: [1, 1], fn: Math.ceil }],
  ['min', { arity: [1, 32], fn: Math.min }],
  ['max', { arity: [1, 32], fn: Math.max }],
]);
const CONSTANTS = new Map<string, number>([
  ['pi', Math.PI],
  ['e', Math.E],
]);

type Token =
  | { kind: 'number'; value: number; at: number }
  | { kind: 'name'; value: string; at: number }
  | { kind: 'op'; value: string; at: number }
  | { kind: 'end'; at: number };

function calcError(message: string): ToolError {
  return new ToolError(message, 'ERP_TOOL_CALCULATOR');
}

function tokenize(text: string): Token[] {
  const tokens: Token[] = [];
  const token = /(\d+\.?\d*(?:e[+-]?\d+)?|\.\d+(?:e[+-]?\d+)?)|([a-z]+)|(\*\*|[-+*/%^(),×÷])/iy;
  let at = 0;
  while (at < text.length) {
    if (/\s/.test(text.charAt(at))) {
      at++;
      continue;
    }
    token.lastIndex = at;
    const m = token.exec(text);
    if (!m) {
      const bad = String.fromCodePoint(text.codePointAt(at) as number);
      throw calcError(`unexpected "${bad}" at position ${at + 1}`);
    }
    if (m[1] !== undefined) tokens.push({ kind: 'number', value: Number(m[1]), at });
    else if (m[2] !== undefined) tokens.push({ kind: 'name', value: m[2].toLowerCase(), at });
    else {
      const op = m[3] === '**' ? '^' : m[3] === '×' ? '*' : m[3] === '÷' ? '/' : (m[3] as string);
      tokens.push({ kind: 'op', value: op, at });
    }
    at = token.lastIndex;
  }
  tokens.push({ kind: 'end', at: text.length });
  return tokens;
}

/**
 * Grammar (usual precedence; ^ binds tighter than unary minus and is right-associative, so -2^2 = -4
 * and 2^3^2 = 512):
 *   expr  = term (("+" | "-") term)*
 *   term  = unary (("*" | "/" | "%") unary)*
 *   unary = ("-" | "+") unary | power
 *   power = atom ("^" unary)?
 *   atom  = number | constant | function "(" expr ("," expr)* ")" | "(" expr ")"
 */
export function calculate(expression: string): number {
  if (expression.length > MAX_EXPRESSION_LENGTH) {
    throw calcError(`the expression is longer than ${MAX_EXPRESSION_LENGTH} characters`);
  }
  const tokens = tokenize(expression);
  let i = 0;
  let depth = 0;
  const peek = () => tokens[i] as Token;
  const isOp = (value: string) => {
    const t = peek();
    return t.kind === 'op' && t.value === value;
  };
  const describe = (t: Token) => (t.kind === 'end' ? 'the end of the expression' : `"${t.value}"`);
  const expect = (value: string) => {
    if (!isOp(value)) throw calcError(`expected "${value}" but found ${describe(peek())}`);
    i++;
  };
  const nest = <T>(f: () => T): T => {
    if (++depth > MAX_NESTING) throw calcError('the expression is nested too deeply');
    try {
      return f();
    } finally {
      depth--;
    }
  };

  const expr = (): number =>
    nest(() => {
      let value = term();
      while (isOp('+') || isOp('-')) {
        const op = (tokens[i++] as { value: string }).value;
        const right = term();
        value = op === '+' ? value + right : value - right;
      }
      return value;
    });
  const term = (): number => {
    let value = unary();
    while (isOp('*') || isOp('/') || isOp('%')) {
      const op = (tokens[i++] as { value: string }).value;
      const right = unary();
      if ((op === '/' || op === '%') && right === 0) throw calcError('division by zero');
      value = op === '*' ? value * right : op === '/' ? value / right : value % right;
    }
    return value;
  };
  const unary = (): number =>
    nest(() => {
      const sign = isOp('-') ? -1 : isOp('+') ? 1 : 0;
      if (sign === 0) return power();
      i++;
      return sign * unary();
    });
  const power = (): number => {
    const base = atom();
    if (!isOp('^')) return base;
    i++;
    return base ** unary();
  };
  const atom = (): number => {
    const t = peek();
    if (t.kind === 'number') {
      i++;
      return t.value;
    }
    if (isOp('(')) {
      i++;
      const value = expr();
      expect(')');
      return value;
    }
    if (t.kind === 'name') {
      i++;
      const fn = FUNCTIONS.get(t.value);
      if (fn && isOp('(')) {
        i++;
        const args = [expr()];
        while (isOp(',')) {
          i++;
          args.push(expr());
        }
        expect(')');
        const [least, most] = fn.arity;
        if (args.length < least || args.length > most) {
          throw calcError(`${t.value} takes ${least === most ? least : `${least} to ${most}`} argument(s)`);
        }
        return fn.fn(...args);
      }
      if (fn) throw calcError(`expected "(" after ${t.value}`);
      const constant = CONSTANTS.get(t.value);
      if (constant !== undefined) return constant;
      throw calcError(
        `unknown name "${t.value}"; known: ${[...FUNCTIONS.keys(), ...CONSTANTS.keys()].join(', ')}`,
      );
    }
    throw calcError(`expected a number but found ${describe(t)}`);
  };

  if (peek().kind === 'end') throw calcError('the expression is empty');
  const result = expr();
  if (peek().kind !== 'end') throw calcError(`unexpected ${describe(peek())} at position ${peek().at + 1}`);
  if (!Number.isFinite(result)) throw calcError('the result is not a finite real number');
  // 12 significant digits hide binary rounding (0.1 + 0.2 = 0.3) without losing anything a voice would say.
  return Number(result.toPrecision(12));
}
