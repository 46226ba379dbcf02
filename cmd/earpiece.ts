#!/usr/bin/env node
/**
 * One binary, one module per subcommand. Only the chosen module is imported, so `earpiece proxy`
 * never loads Kubernetes code and `earpiece operator` never loads the tool executors.
 */
const commands: Record<
  string,
  { summary: string; load: () => Promise<{ main(argv: string[]): Promise<number> }> }
> = {
  proxy: {
    summary: 'run the tool-calling proxy in front of an LLM server',
    load: () => import('./proxy.js'),
  },
  operator: {
    summary: 'run the ToolSet controller and the injection webhook',
    load: () => import('./operator.js'),
  },
  inject: {
    summary: 'add the earpiece sidecar to Kubernetes manifests offline',
    load: () => import('./inject.js'),
  },
  validate: { summary: 'check a ToolSet file and report every problem', load: () => import('./validate.js') },
  demo: {
    summary: 'a spoken conversation with tools, no GPU or network needed',
    load: () => import('./demo.js'),
  },
  'gen-crd': {
    summary: 'write the ToolSet CRD generated from the schema',
    load: () => import('./gen-crd.js'),
  },
};

function usage(): string {
  const width = Math.max(...Object.keys(commands).map((c) => c.length));
  const lines = Object.entries(commands).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return `Usage: earpiece <command> [options]\n\nCommands:\n${lines.join('\n')}\n\nRun earpiece <command> --help for its options.`;
}

const [name, ...rest] = process.argv.slice(2);
const command = name ? commands[name] : undefined;
if (!command) {
  const unknown = name && name !== '--help' && name !== '-h';
  (unknown ? console.error : console.log)(
    `${unknown ? `earpiece: unknown command "${name}"\n\n` : ''}${usage()}`,
  );
  process.exitCode = unknown || !name ? 2 : 0;
} else {
  const mod = await command.load();
  process.exitCode = await mod.main(rest);
}
