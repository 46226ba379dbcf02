/**
 * Builds the Dockerfile without Docker: each stage gets its own folder as its root filesystem, and the
 * steps run as Docker would run them — WORKDIR, ENV, COPY from the build context (honouring
 * .dockerignore) or from an earlier stage, RUN through `sh -c`. The base image is stood in for by this
 * machine's Node.js (the pinned Node 24, first on PATH) and npm, so the npm and build steps are the real
 * ones; only what the base image itself contains is not reproduced.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, symlinkSync } from 'node:fs';
import path from 'node:path';

export interface Instruction {
  op: string;
  args: string;
  line: number;
}

export interface Stage {
  name: string;
  from: string;
  instructions: Instruction[];
}

/** Instructions by stage, with comments dropped and continued lines joined. */
export function parseDockerfile(text: string): Stage[] {
  const stages: Stage[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const start = i;
    let line = lines[i]!.trim();
    if (line === '' || line.startsWith('#')) continue;
    while (line.endsWith('\\') && i + 1 < lines.length) line = `${line.slice(0, -1)} ${lines[++i]!.trim()}`;
    const [, op, args] = /^(\S+)\s*(.*)$/.exec(line)!;
    const instruction = { op: op!.toUpperCase(), args: args!, line: start + 1 };
    if (instruction.op === 'FROM') {
      const [from, as, name] = args!.split(/\s+/);
      stages.push({
        name: as?.toUpperCase() === 'AS' ? name! : String(stages.length),
        from: from!,
        instructions: [],
      });
    } else {
      if (stages.length === 0) throw new Error(`Dockerfile line ${start + 1}: ${op} before FROM`);
      stages.at(-1)!.instructions.push(instruction);
    }
  }
  return stages;
}

/** Docker's pattern syntax (Go's filepath.Match plus `**`): unlike shell globs, `*` matches dotfiles. */
function dockerPattern(glob: string): RegExp {
  const token: Record<string, string> = { '**/': '(?:.*/)?', '**': '.*', '*': '[^/]*', '?': '[^/]' };
  const source = glob.replace(/\*\*\/?|[*?]|[.+^${}()|\\]/g, (m) => token[m] ?? `\\${m}`);
  return new RegExp(`^${source}$`);
}

/** A .dockerignore: the last pattern that matches a path (or one of its parent folders) decides. */
export function dockerignore(text: string): (relative: string) => boolean {
  const patterns = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => {
      const negated = l.startsWith('!');
      const glob = path.posix.normalize(negated ? l.slice(1) : l).replace(/^\/|\/$/g, '');
      return { negated, pattern: dockerPattern(glob) };
    });
  return (relative) => {
    const parts = relative.split('/');
    const candidates = parts.map((_, i) => parts.slice(0, i + 1).join('/'));
    let ignored = false;
    for (const { negated, pattern } of patterns)
      if (candidates.some((c) => pattern.test(c))) ignored = !negated;
    return ignored;
  };
}

/** JSON (exec) form of ENTRYPOINT or CMD. */
export function execForm(instruction: Instruction): string[] {
  const parsed: unknown = JSON.parse(instruction.args);
  if (!Array.isArray(parsed) || !parsed.every((a) => typeof a === 'string'))
    throw new Error(`Dockerfile line ${instruction.line}: ${instruction.op} is not in exec form`);
  return parsed;
}

export interface BuildOptions {
  dockerfile: string;
  context: string;
  /** Empty folder that receives one root folder per stage. */
  out: string;
  /** Extra environment for RUN steps (e.g. npm_config_prefer_offline). */
  runEnv?: Record<string, string>;
}

export interface BuiltImage {
  /** The final stage's root folder. */
  root: string;
  workdir: string;
  env: Record<string, string>;
  user?: string;
  entrypoint: string[];
  cmd: string[];
  stages: Stage[];
  /** PATH for running the image: its node first, as in the base image. */
  path: string;
}

const parseCopy = (args: string) => {
  const words = args.split(/\s+/);
  const from = words.find((w) => w.startsWith('--from='))?.slice('--from='.length);
  const paths = words.filter((w) => !w.startsWith('--'));
  return { from, sources: paths.slice(0, -1), dest: paths.at(-1)! };
};

export function buildImage(opts: BuildOptions): BuiltImage {
  const stages = parseDockerfile(readFileSync(opts.dockerfile, 'utf8'));
  const ignorePath = path.join(opts.context, '.dockerignore');
  const ignored = existsSync(ignorePath) ? dockerignore(readFileSync(ignorePath, 'utf8')) : () => false;
  // The base image's node: the pinned Node 24 running these tests.
  const bin = path.join(opts.out, 'base-image-bin');
  mkdirSync(bin, { recursive: true });
  symlinkSync(process.execPath, path.join(bin, 'node'));
  const basePath = [bin, '/usr/local/bin', '/usr/bin', '/bin'].join(':');
  const roots = new Map<string, string>();

  let last: BuiltImage | undefined;
  for (const [index, stage] of stages.entries()) {
    const root = path.join(opts.out, `${index}-${stage.name}`);
    mkdirSync(root, { recursive: true });
    roots.set(stage.name, root);
    const image: BuiltImage = {
      root,
      workdir: '/',
      env: {},
      entrypoint: [],
      cmd: [],
      stages,
      path: basePath,
    };
    const inRoot = (p: string) => path.join(root, path.posix.resolve(image.workdir, p));

    for (const step of stage.instructions) {
      const where = `Dockerfile line ${step.line}`;
      switch (step.op) {
        case 'WORKDIR':
          image.workdir = path.posix.resolve(image.workdir, step.args);
          mkdirSync(inRoot('.'), { recursive: true });
          break;
        case 'ENV':
          for (const pair of step.args.split(/\s+/)) {
            const eq = pair.indexOf('=');
            image.env[pair.slice(0, eq)] = pair.slice(eq + 1);
          }
          break;
        case 'COPY': {
          const { from, sources, dest } = parseCopy(step.args);
          const target = inRoot(dest);
          const intoFolder = dest.endsWith('/') || sources.length > 1;
          for (const source of sources) {
            let origin: string;
            if (from !== undefined) {
              const fromRoot = roots.get(from);
              if (!fromRoot) throw new Error(`${where}: no stage named ${from}`);
              origin = path.join(fromRoot, source);
            } else {
              const relative = path.posix.normalize(source).replace(/^\.\/|\/$/g, '');
              if (ignored(relative)) throw new Error(`${where}: ${source} is left out by .dockerignore`);
              origin = path.join(opts.context, relative);
            }
            if (!existsSync(origin)) throw new Error(`${where}: ${source} does not exist`);
            const destination = intoFolder ? path.join(target, path.basename(origin)) : target;
            cpSync(origin, destination, {
              recursive: true,
              filter: (file) => from !== undefined || !ignored(path.relative(opts.context, file)),
            });
          }
          break;
        }
        case 'RUN': {
          const result = spawnSync('sh', ['-c', step.args], {
            cwd: inRoot('.'),
            encoding: 'utf8',
            env: { HOME: process.env.HOME ?? '/root', PATH: basePath, ...opts.runEnv, ...image.env },
            maxBuffer: 64 * 1024 * 1024,
          });
          if (result.status !== 0)
            throw new Error(
              `${where}: RUN ${step.args} exited ${result.status}\n${result.stdout}\n${result.stderr}`,
            );
          break;
        }
        case 'USER':
          image.user = step.args;
          break;
        case 'ENTRYPOINT':
          image.entrypoint = execForm(step);
          break;
        case 'CMD':
          image.cmd = execForm(step);
          break;
        case 'EXPOSE':
          break;
        default:
          throw new Error(`${where}: ${step.op} is not supported by this builder`);
      }
    }
    last = image;
  }
  if (!last) throw new Error('the Dockerfile has no stage');
  return last;
}
