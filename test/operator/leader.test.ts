/**
 * Lease election between replicas, each with its own client (user) of the fake API server, so one can
 * be cut off as in a network partition. Durations are short; the bounds are hang guards.
 */
import { createServer, request as httpRequest, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { CoordinationV1Api, KubeConfig } from '@kubernetes/client-node';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LeaderElector } from '../../src/operator/leader.js';
import { createLogger } from '../../src/telemetry/log.js';
import { type FakeApiServer, type RequestInfo, startFakeApiServer } from '../support/fake-apiserver.js';

let api: FakeApiServer;
const electors: LeaderElector[] = [];
const relays: Server[] = [];

beforeEach(async () => {
  api = await startFakeApiServer();
});
afterEach(async () => {
  for (const relay of relays.splice(0)) {
    relay.closeAllConnections();
    relay.close();
  }
  await Promise.all(electors.splice(0).map((e) => e.stop()));
  await api.close();
});

interface Candidate {
  elector: LeaderElector;
  log: string[];
  /** What the elector logged at warn, parsed. */
  warnings: Record<string, unknown>[];
}

const WARN = 40;

function candidate(
  identity: string,
  onLead?: () => void,
  options: { kc?: KubeConfig; leaseDurationMs?: number; renewDeadlineMs?: number } = {},
): Candidate {
  const log: string[] = [];
  const warnings: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk, _encoding, done) {
      const line = JSON.parse(String(chunk)) as Record<string, unknown>;
      if (line.level === WARN) warnings.push(line);
      done();
    },
  });
  const elector = new LeaderElector({
    api: (options.kc ?? api.kubeConfig(identity)).makeApiClient(CoordinationV1Api),
    namespace: 'earpiece-system',
    name: 'earpiece-operator',
    identity,
    leaseDurationMs: options.leaseDurationMs ?? 1000,
    renewDeadlineMs: options.renewDeadlineMs ?? 700,
    retryPeriodMs: 100,
    logger: createLogger('test', 'debug', sink),
    onStartedLeading: () => {
      log.push('started');
      onLead?.();
    },
    onStoppedLeading: () => {
      log.push('stopped');
    },
  });
  electors.push(elector);
  return { elector, log, warnings };
}

/**
 * A real HTTP hop in front of the fake API server. Once cut, requests fail at once until `hangAfterMs`
 * have passed since the last Lease write that got through, and from then on get no answer at all.
 */
async function relay(identity: string, hangAfterMs: number): Promise<{ kc: KubeConfig; cut(): void }> {
  let lastWrite = 0;
  let cut = false;
  const server = createServer((req, res: ServerResponse) => {
    if (cut) {
      if (performance.now() - lastWrite < hangAfterMs) {
        res.writeHead(503, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ kind: 'Status', apiVersion: 'v1', status: 'Failure', code: 503 }));
      }
      return;
    }
    const upstream = httpRequest(
      new URL(req.url ?? '/', api.url),
      { method: req.method, headers: req.headers },
      (answer) => {
        if (req.method !== 'GET' && (answer.statusCode ?? 500) < 300) lastWrite = performance.now();
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    req.pipe(upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  relays.push(server);
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [
      {
        name: 'relay',
        server: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
        skipTLSVerify: true,
      },
    ],
    users: [{ name: identity, token: identity }],
    contexts: [{ name: 'relay', cluster: 'relay', user: identity }],
    currentContext: 'relay',
  });
  return { kc, cut: () => (cut = true) };
}

const lease = () =>
  api.get('leases', 'earpiece-system', 'earpiece-operator')?.spec as Record<string, unknown>;

describe('leader election', () => {
  it('elects exactly one of two candidates that start together', async () => {
    const a = candidate('a');
    const b = candidate('b');
    a.elector.start();
    b.elector.start();
    await expect.poll(() => a.elector.isLeader || b.elector.isLeader, { timeout: 10_000 }).toBe(true);
    // Several renewals later there is still one leader, and it is the Lease holder.
    await new Promise((r) => setTimeout(r, 500));
    expect([a.elector.isLeader, b.elector.isLeader].filter(Boolean)).toHaveLength(1);
    const leader = a.elector.isLeader ? 'a' : 'b';
    expect(lease()).toMatchObject({ holderIdentity: leader, leaseDurationSeconds: 1 });
    expect(String(lease().renewTime)).toMatch(/\.\d{6}Z$/);
  });

  it("uses client-go's timings when given none", async () => {
    const elector = new LeaderElector({
      api: api.kubeConfig('a').makeApiClient(CoordinationV1Api),
      namespace: 'earpiece-system',
      name: 'earpiece-operator',
      identity: 'a',
      logger: createLogger('test', 'silent'),
      onStartedLeading: () => undefined,
      onStoppedLeading: () => undefined,
    });
    electors.push(elector);
    elector.start();
    await expect.poll(() => elector.isLeader, { timeout: 10_000 }).toBe(true);
    expect(lease()).toMatchObject({ holderIdentity: 'a', leaseDurationSeconds: 15 });
  });

  it('hands over at once when the leader stops: it releases the Lease', async () => {
    const a = candidate('a');
    a.elector.start();
    await expect.poll(() => a.elector.isLeader, { timeout: 10_000 }).toBe(true);
    const b = candidate('b', () => expect(a.elector.isLeader).toBe(false));
    b.elector.start();
    await new Promise((r) => setTimeout(r, 300));
    expect(b.elector.isLeader).toBe(false);
    await a.elector.stop();
    expect(a.log).toEqual(['started', 'stopped']);
    expect(lease().holderIdentity).toBe('');
    await expect.poll(() => b.elector.isLeader, { timeout: 10_000 }).toBe(true);
    expect(lease()).toMatchObject({ holderIdentity: 'b', leaseTransitions: 1 });
  });

  it('takes over from a leader cut off from the API server, which stops leading first', async () => {
    const a = candidate('a');
    a.elector.start();
    await expect.poll(() => a.elector.isLeader, { timeout: 10_000 }).toBe(true);
    const order: string[] = [];
    const b = candidate('b', () => order.push(`b started while a leads: ${a.elector.isLeader}`));
    b.elector.start();
    await new Promise((r) => setTimeout(r, 300));
    api.block('a');
    await expect.poll(() => b.elector.isLeader, { timeout: 10_000 }).toBe(true);
    expect(a.log).toEqual(['started', 'stopped']);
    expect(order).toEqual(['b started while a leads: false']);
    expect(lease()).toMatchObject({ holderIdentity: 'b' });
    // Back on the network, the old leader sees a live holder and stays a follower.
    api.unblock('a');
    await new Promise((r) => setTimeout(r, 500));
    expect(a.elector.isLeader).toBe(false);
    expect(b.elector.isLeader).toBe(true);
  });

  it('stops leading within the renew deadline even when a renewal hangs late in it', async () => {
    // Renewals fail at once for 1.1 s of the 1.4 s deadline, then one hangs: the leader must still stop
    // by the deadline, before the 2 s Lease lets the other candidate in.
    const timings = { leaseDurationMs: 2000, renewDeadlineMs: 1400 };
    const hop = await relay('a', 1100);
    const a = candidate('a', undefined, { ...timings, kc: hop.kc });
    a.elector.start();
    await expect.poll(() => a.elector.isLeader, { timeout: 10_000 }).toBe(true);
    const order: string[] = [];
    const b = candidate('b', () => order.push(`b started while a leads: ${a.elector.isLeader}`), timings);
    b.elector.start();
    await new Promise((r) => setTimeout(r, 300));
    hop.cut();
    await expect.poll(() => b.elector.isLeader, { timeout: 10_000 }).toBe(true);
    expect(order).toEqual(['b started while a leads: false']);
    expect(a.log).toEqual(['started', 'stopped']);
    // The renewals that failed say why, not the one cut off by the deadline.
    expect(a.warnings.find((w) => w.msg === 'Lost Lease')).toMatchObject({ step: 'read', status: 503 });
  });

  it('warns once per distinct Lease failure, naming the step and status, and again after the Lease was held', async () => {
    let refused: (r: RequestInfo) => boolean = (r) => r.resource === 'leases';
    api.fail((r) => refused(r), 403, Number.MAX_SAFE_INTEGER);
    const a = candidate('a');
    const summary = () => a.warnings.map((w) => [w.msg, w.step, w.status]);
    const leaseRequests = () => api.requests.filter((r) => r.resource === 'leases').length;
    /** Lets at least `retries` more Lease requests happen. */
    const retried = async (retries: number) => {
      const before = leaseRequests();
      await expect.poll(leaseRequests, { timeout: 10_000 }).toBeGreaterThanOrEqual(before + retries);
    };
    const recover = async () => {
      refused = () => false;
      await expect.poll(() => a.elector.isLeader, { timeout: 10_000 }).toBe(true);
    };
    a.elector.start();

    // Missing RBAC: refused at every retry, one warning.
    await retried(5);
    expect(summary()).toEqual([['Failed to read Lease', 'read', 403]]);
    expect(a.warnings[0]?.err).toMatch(/^HTTP 403: injected failure for GET /);

    // The same failure after the Lease was held in between: warned again, and the loss says why.
    await recover();
    refused = (r) => r.resource === 'leases';
    await expect.poll(() => a.log, { timeout: 10_000 }).toEqual(['started', 'stopped']);
    await retried(5);
    expect(summary()).toEqual([
      ['Failed to read Lease', 'read', 403],
      ['Failed to read Lease', 'read', 403],
      ['Lost Lease', 'read', 403],
    ]);

    // Only renewals refused: another step, warned once.
    await recover();
    refused = (r) => r.resource === 'leases' && r.method === 'PUT';
    await expect.poll(() => a.log, { timeout: 10_000 }).toEqual(['started', 'stopped', 'started', 'stopped']);
    await retried(6);
    expect(summary().slice(3)).toEqual([
      ['Failed to renew Lease', 'renew', 403],
      ['Lost Lease', 'renew', 403],
    ]);
  });
});
