/**
 * The series of kube-state-metrics and the kubelet's cAdvisor that the dashboard and alerts read about
 * the earpiece-proxy containers, with their real names and labels (kube-state-metrics v2: a native
 * sidecar is an init container there, with its own `kube_pod_init_container_*` series). Scraped with
 * honor_labels, as kube-prometheus-stack scrapes them.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Registry } from 'prom-client';

const POD_LABELS = ['namespace', 'pod', 'container'] as const;

export interface SidecarPod {
  namespace: string;
  pod: string;
  /** A native sidecar (init container) or a plain container. */
  native: boolean;
  memoryLimitBytes: number;
  workingSetBytes: number;
}

export class KubeMetrics {
  private readonly registry = new Registry();
  private readonly restarts: Record<'init' | 'plain', Counter<(typeof POD_LABELS)[number]>>;
  private readonly lastTerminated: Record<'init' | 'plain', Gauge<(typeof POD_LABELS)[number] | 'reason'>>;
  private readonly limits: Record<'init' | 'plain', Gauge<(typeof POD_LABELS)[number] | 'resource' | 'unit'>>;
  private readonly workingSet: Gauge<(typeof POD_LABELS)[number]>;
  private readonly lastReason = new Map<string, string>();
  private server: Server | undefined;

  constructor() {
    const registers = [this.registry];
    const kinds = { init: 'kube_pod_init_container', plain: 'kube_pod_container' } as const;
    const each = <T>(make: (prefix: string) => T) => ({ init: make(kinds.init), plain: make(kinds.plain) });
    this.restarts = each(
      (prefix) =>
        new Counter({
          name: `${prefix}_status_restarts_total`,
          help: 'The number of restarts for the container.',
          labelNames: POD_LABELS,
          registers,
        }),
    );
    this.lastTerminated = each(
      (prefix) =>
        new Gauge({
          name: `${prefix}_status_last_terminated_reason`,
          help: 'Describes the last reason the container was in terminated state.',
          labelNames: [...POD_LABELS, 'reason'],
          registers,
        }),
    );
    this.limits = each(
      (prefix) =>
        new Gauge({
          name: `${prefix}_resource_limits`,
          help: 'The number of requested limit resource by a container.',
          labelNames: [...POD_LABELS, 'resource', 'unit'],
          registers,
        }),
    );
    this.workingSet = new Gauge({
      name: 'container_memory_working_set_bytes',
      help: 'Current working set of the container in bytes',
      labelNames: POD_LABELS,
      registers,
    });
  }

  /** A pod with an earpiece-proxy sidecar. */
  pod(p: SidecarPod): void {
    const labels = { namespace: p.namespace, pod: p.pod, container: 'earpiece-proxy' };
    const kind = p.native ? 'init' : 'plain';
    this.restarts[kind].inc(labels, 0);
    this.limits[kind].set({ ...labels, resource: 'memory', unit: 'byte' }, p.memoryLimitBytes);
    this.workingSet.set(labels, p.workingSetBytes);
  }

  /** The sidecar was restarted after ending with `reason` (OOMKilled, Error, ...). */
  restarted(p: Pick<SidecarPod, 'namespace' | 'pod' | 'native'>, reason: string): void {
    const labels = { namespace: p.namespace, pod: p.pod, container: 'earpiece-proxy' };
    const kind = p.native ? 'init' : 'plain';
    this.restarts[kind].inc(labels);
    // Only the last reason has a series, as in kube-state-metrics.
    const previous = this.lastReason.get(p.pod);
    if (previous) this.lastTerminated[kind].remove({ ...labels, reason: previous });
    this.lastTerminated[kind].set({ ...labels, reason }, 1);
    this.lastReason.set(p.pod, reason);
  }

  /** Serves /metrics on a free loopback port; returns host:port. */
  async listen(): Promise<string> {
    this.server = createServer((_req, res) => {
      void this.registry.metrics().then((text) => {
        res.writeHead(200, { 'content-type': this.registry.contentType }).end(text);
      });
    });
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    return `127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async close(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
