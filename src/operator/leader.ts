/**
 * Leader election with a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it:
 * - a candidate takes the Lease when it is free (no holder) or when its record has not changed for
 *   leaseDurationSeconds, measured on this replica's monotonic clock from when it last saw the record
 *   change (so neither clock skew between replicas nor a wall clock jump matters; the injected Clock
 *   only dates what is written into the Lease);
 * - the leader renews every retry period; if no renewal succeeds within the renew deadline it stops
 *   leading at once (before the Lease can expire for the others);
 * - every write is a replace with the resourceVersion it read, so two candidates never both win (409);
 * - on a graceful stop the leader releases the Lease (no holder, 1 s), so another replica takes over
 *   without waiting for expiry.
 * A failed Lease request is logged at warn once, not at every retry, until it fails differently or
 * works again: a replica that can never take the Lease (RBAC, an API outage) reconciles nothing.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { type CoordinationV1Api, type V1Lease, type V1LeaseSpec, V1MicroTime } from '@kubernetes/client-node';
import type { Logger } from '../telemetry/log.js';
import { describeApiError, statusOf } from './api-errors.js';
import { type Clock, systemClock } from './clock.js';
import { ConfigError } from './config.js';

export interface LeaderElectionOptions {
  api: CoordinationV1Api;
  namespace: string;
  name: string;
  /** This replica (the pod name). */
  identity: string;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  clock?: Clock;
  logger: Logger;
  onStartedLeading: () => void | Promise<void>;
  onStoppedLeading: () => void | Promise<void>;
}

type LeaseStep = 'read' | 'create' | 'acquire' | 'renew';

/** A Lease request that went wrong; a 409 is not one (another candidate wrote first). */
interface LeaseFailure {
  step: LeaseStep;
  /** Undefined when no HTTP answer came (a connection error, a request that hung). */
  status: number | undefined;
  cause: string;
}

/** One try at the Lease: held, or not (with the failure, unless another replica holds it or won the race). */
type Attempt = { held: true } | { held: false; failure?: LeaseFailure };

export class LeaderElector {
  private readonly o: Required<Omit<LeaderElectionOptions, 'clock'>> & { clock: Clock };
  private readonly abort = new AbortController();
  private loop: Promise<void> | undefined;
  private leading = false;
  /** The Lease spec as last seen, and when (monotonic ms) it last changed. */
  private observed: { record: string; at: number } | undefined;
  private lastLeader: string | undefined;
  /** The Lease request in flight, which stop() lets finish before releasing. */
  private attempt: Promise<Attempt> | undefined;
  /** What that request does, to name it when it hangs. */
  private step: LeaseStep = 'read';
  /** The failure last logged at warn (step and status, or message when no status came). */
  private reportedFailure: string | undefined;

  constructor(options: LeaderElectionOptions) {
    this.o = {
      ...options,
      leaseDurationMs: options.leaseDurationMs ?? 15_000,
      renewDeadlineMs: options.renewDeadlineMs ?? 10_000,
      retryPeriodMs: options.retryPeriodMs ?? 2_000,
      clock: options.clock ?? systemClock,
    };
    if (this.o.renewDeadlineMs >= this.o.leaseDurationMs) {
      throw new ConfigError('leader election: the renew deadline must be shorter than the lease');
    }
  }

  get isLeader(): boolean {
    return this.leading;
  }

  start(): void {
    this.loop ??= this.run();
  }

  /** Stops campaigning; a leader stops leading and releases the Lease. */
  async stop(): Promise<void> {
    this.abort.abort();
    await this.loop;
    await this.attempt;
    if (this.leading) {
      this.leading = false;
      await this.o.onStoppedLeading();
      await this.release();
    }
  }

  private async run(): Promise<void> {
    const signal = this.abort.signal;
    let lastRenew = 0;
    /** The last failure since lastRenew: why a leader that loses the Lease lost it. */
    let failureSinceRenew: LeaseFailure | undefined;
    while (!signal.aborted) {
      // A request that hangs must not keep a leader leading past its deadline, which runs from the last
      // renewal (as client-go's does), not from the start of this attempt: a hang that began late in the
      // deadline would otherwise outlast the Lease the others see.
      const budget = this.leading
        ? Math.max(0, lastRenew + this.o.renewDeadlineMs - performance.now())
        : this.o.renewDeadlineMs;
      const attempt = new AbortController();
      this.attempt = this.tryAcquireOrRenew();
      // Undefined: no answer within the budget.
      const result = await Promise.race([
        this.attempt,
        sleep(budget, undefined, { signal: AbortSignal.any([signal, attempt.signal]) }).catch(
          () => undefined,
        ),
      ]);
      attempt.abort();
      if (signal.aborted) break;
      const now = performance.now();
      if (result?.held) {
        this.report(undefined);
        lastRenew = now;
        failureSinceRenew = undefined;
        if (!this.leading) {
          this.leading = true;
          this.o.logger.info({ lease: this.o.name, identity: this.o.identity }, 'Acquired Lease');
          await this.o.onStartedLeading();
        }
      } else if (result) {
        // Answered: a request failed, or another replica holds the Lease or wrote it first (no failure).
        this.report(result.failure);
        failureSinceRenew = result.failure ?? failureSinceRenew;
      } else if (this.leading) {
        // The renew deadline ran out: not a failure of its own, unless no other came before it.
        failureSinceRenew ??= {
          step: this.step,
          status: undefined,
          cause: 'no answer before the renew deadline',
        };
      } else {
        this.report({ step: this.step, status: undefined, cause: `no answer within ${budget} ms` });
      }
      if (this.leading && now - lastRenew >= this.o.renewDeadlineMs) {
        this.leading = false;
        const why = failureSinceRenew
          ? { step: failureSinceRenew.step, status: failureSinceRenew.status, err: failureSinceRenew.cause }
          : { err: 'another replica holds it', leader: this.lastLeader };
        this.o.logger.warn({ lease: this.o.name, identity: this.o.identity, ...why }, 'Lost Lease');
        await this.o.onStoppedLeading();
      }
      // client-go's jitter: candidates do not retry in lockstep.
      const wait = this.leading ? this.o.retryPeriodMs : this.o.retryPeriodMs * (1 + Math.random() * 0.2);
      await sleep(wait, undefined, { signal }).catch(() => undefined);
    }
  }

  private micro(): V1MicroTime {
    return new V1MicroTime(this.o.clock.now().getTime());
  }

  private async tryAcquireOrRenew(): Promise<Attempt> {
    const { api, namespace, name, identity } = this.o;
    const durationSeconds = Math.max(1, Math.round(this.o.leaseDurationMs / 1000));
    let lease: V1Lease;
    try {
      this.step = 'read';
      lease = await api.readNamespacedLease({ name, namespace });
    } catch (err) {
      if (statusOf(err) !== 404) return this.failed('read', err);
      try {
        const now = this.micro();
        this.step = 'create';
        await api.createNamespacedLease({
          namespace,
          body: {
            metadata: { name, namespace },
            spec: {
              holderIdentity: identity,
              leaseDurationSeconds: durationSeconds,
              acquireTime: now,
              renewTime: now,
              leaseTransitions: 0,
            },
          },
        });
        this.observe({ holderIdentity: identity });
        return { held: true };
      } catch (createErr) {
        return this.failed('create', createErr);
      }
    }
    const spec: V1LeaseSpec = lease.spec ?? {};
    this.observe(spec);
    const holder = spec.holderIdentity ?? '';
    if (holder !== '' && holder !== identity) {
      if (holder !== this.lastLeader) {
        this.lastLeader = holder;
        this.o.logger.info({ lease: name, leader: holder }, 'Observed new leader');
      }
      const expiresAt = (this.observed?.at ?? 0) + (spec.leaseDurationSeconds ?? durationSeconds) * 1000;
      if (performance.now() < expiresAt) return { held: false };
    }
    const now = this.micro();
    const next: V1LeaseSpec = {
      ...spec,
      holderIdentity: identity,
      leaseDurationSeconds: durationSeconds,
      renewTime: now,
    };
    if (holder !== identity) {
      next.acquireTime = now;
      next.leaseTransitions = (spec.leaseTransitions ?? 0) + 1;
    }
    const step = holder === identity ? 'renew' : 'acquire';
    try {
      this.step = step;
      await api.replaceNamespacedLease({ name, namespace, body: { ...lease, spec: next } });
      this.observe(next);
      return { held: true };
    } catch (err) {
      return this.failed(step, err);
    }
  }

  private observe(spec: V1LeaseSpec): void {
    const record = JSON.stringify(spec);
    if (this.observed?.record !== record) this.observed = { record, at: performance.now() };
  }

  private failed(step: LeaseStep, err: unknown): Attempt {
    const status = statusOf(err);
    // 409: another candidate wrote first; that is the election working, not an error.
    if (status === 409) return { held: false };
    return { held: false, failure: { step, status, cause: describeApiError(err) } };
  }

  /** Logs a failure at warn unless it is the one last logged (then at debug); a try without one rearms. */
  private report(failure: LeaseFailure | undefined): void {
    const key = failure && `${failure.step} ${failure.status ?? failure.cause}`;
    if (failure) {
      const level = key === this.reportedFailure ? 'debug' : 'warn';
      this.o.logger[level](
        {
          lease: this.o.name,
          identity: this.o.identity,
          step: failure.step,
          status: failure.status,
          err: failure.cause,
        },
        `Failed to ${failure.step} Lease`,
      );
    }
    this.reportedFailure = key;
  }

  private async release(): Promise<void> {
    const { api, namespace, name, identity } = this.o;
    try {
      const lease = await api.readNamespacedLease({ name, namespace });
      if (lease.spec?.holderIdentity !== identity) return;
      const now = this.micro();
      await api.replaceNamespacedLease({
        name,
        namespace,
        body: {
          ...lease,
          spec: {
            ...lease.spec,
            holderIdentity: '',
            leaseDurationSeconds: 1,
            renewTime: now,
            acquireTime: now,
          },
        },
      });
      this.o.logger.info({ lease: name, identity }, 'Released Lease');
    } catch (err) {
      this.o.logger.warn({ lease: name, err: describeApiError(err) }, 'Failed to release Lease');
    }
  }
}
