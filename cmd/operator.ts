import { KubeConfig } from '@kubernetes/client-node';
import { HELP, loadConfig, type OperatorConfig } from '../src/operator/config.js';
import { startOperator } from '../src/operator/start.js';
import { createLogger } from '../src/telemetry/log.js';

/** Settings from flags and environment (see --help); in a pod the service account, else the kubeconfig. */
export async function main(argv: string[]): Promise<number> {
  let config: OperatorConfig;
  try {
    const loaded = loadConfig(argv);
    if (loaded.help) {
      console.log(HELP);
      return 0;
    }
    config = loaded.config;
  } catch (err) {
    console.error(`earpiece operator: ${(err as Error).message}`);
    return 2;
  }
  const logger = createLogger('operator');
  const kc = new KubeConfig();
  if (process.env.KUBERNETES_SERVICE_HOST) kc.loadFromCluster();
  else kc.loadFromDefault();

  const stopping = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    logger.info({ signal }, 'Received signal');
    stopping.abort();
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  let running: Awaited<ReturnType<typeof startOperator>>;
  try {
    running = await startOperator({ kc, config, logger, signal: stopping.signal });
  } catch (err) {
    if (stopping.signal.aborted) return 0;
    logger.fatal({ err }, 'Failed to start operator');
    return 1;
  }
  if (!stopping.signal.aborted) {
    await new Promise((resolve) => stopping.signal.addEventListener('abort', resolve, { once: true }));
  }
  await running.stop();
  logger.info('Stopped operator');
  return 0;
}
