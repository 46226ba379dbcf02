/**
 * Kubernetes Events (core/v1), recorded the way client-go's recorder does: a repeat of the same
 * event on the same object bumps `count` and `lastTimestamp` of the existing Event instead of adding
 * another. Recording never throws: an Event is a courtesy, never a reason to fail a reconcile.
 */
import type { CoreV1Api, CoreV1Event } from '@kubernetes/client-node';
import { PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { LRUCache } from 'lru-cache';
import type { Logger } from '../telemetry/log.js';
import { type Clock, systemClock } from './clock.js';

export interface EventSubject {
  apiVersion: string;
  kind: string;
  name: string;
  /** Cluster-scoped objects get their Events in `default`, as kubectl looks for them there. */
  namespace?: string;
  uid?: string;
}

export interface EventRecorderOptions {
  core: CoreV1Api;
  /** This replica (pod name): reportingInstance. */
  instance: string;
  clock?: Clock;
  logger: Logger;
}

export const COMPONENT = 'earpiece-operator';

const merge = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

export class EventRecorder {
  private readonly seen = new LRUCache<string, { name: string; namespace: string; count: number }>({
    max: 4096,
  });
  private serial = 0;
  private readonly clock: Clock;

  constructor(private readonly o: EventRecorderOptions) {
    this.clock = o.clock ?? systemClock;
  }

  async record(
    subject: EventSubject,
    type: 'Normal' | 'Warning',
    reason: string,
    message: string,
  ): Promise<void> {
    const namespace = subject.namespace ?? 'default';
    const key = [subject.kind, namespace, subject.name, subject.uid, type, reason, message].join('\0');
    const now = this.clock.now();
    const earlier = this.seen.get(key);
    try {
      if (earlier) {
        try {
          await this.o.core.patchNamespacedEvent(
            {
              name: earlier.name,
              namespace,
              body: { count: earlier.count + 1, lastTimestamp: now.toISOString() },
            },
            merge,
          );
          earlier.count++;
          return;
        } catch (err) {
          if ((err as { code?: number }).code !== 404) throw err;
        }
      }
      const name = `${subject.name}.${(now.getTime() * 1000 + (this.serial++ % 1000)).toString(16)}`;
      const event: CoreV1Event = {
        metadata: { name, namespace },
        involvedObject: {
          apiVersion: subject.apiVersion,
          kind: subject.kind,
          name: subject.name,
          namespace: subject.namespace,
          uid: subject.uid,
        },
        type,
        reason,
        message,
        count: 1,
        firstTimestamp: now,
        lastTimestamp: now,
        source: { component: COMPONENT },
        reportingComponent: COMPONENT,
        reportingInstance: this.o.instance,
      };
      await this.o.core.createNamespacedEvent({ namespace, body: event });
      this.seen.set(key, { name, namespace, count: 1 });
    } catch (err) {
      this.o.logger.warn(
        { kind: subject.kind, name: subject.name, reason, err: String(err) },
        'Failed to record Event',
      );
    }
  }
}
