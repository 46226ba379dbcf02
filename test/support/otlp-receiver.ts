/**
 * An OTLP/HTTP receiver for tests: a real HTTP server on 127.0.0.1 that accepts `POST /v1/traces` and
 * `POST /v1/metrics` in the OTLP JSON encoding (the exporters send it with
 * OTEL_EXPORTER_OTLP_PROTOCOL=http/json) and keeps the decoded spans and metric points.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export type AttributeValue = string | number | boolean | AttributeValue[] | undefined;

export interface ReceivedSpan {
  traceId: string;
  spanId: string;
  parentSpanId: string | undefined;
  name: string;
  /** OTLP span kind: 1 internal, 2 server, 3 client. */
  kind: number;
  attributes: Record<string, AttributeValue>;
  /** OTLP status code: 0 unset, 1 ok, 2 error. */
  statusCode: number;
  events: { name: string; attributes: Record<string, AttributeValue> }[];
  /** The resource's `service.name`. */
  serviceName: string | undefined;
}

export interface ReceivedHistogramPoint {
  metric: string;
  unit: string;
  attributes: Record<string, AttributeValue>;
  count: number;
  sum: number;
  explicitBounds: number[];
}

export const SPAN_KIND = { internal: 1, server: 2, client: 3 } as const;

export class OtlpReceiver {
  readonly spans: ReceivedSpan[] = [];
  readonly histogramPoints: ReceivedHistogramPoint[] = [];
  /** Requests the receiver could not decode (a wrong protocol setting shows here, not as silence). */
  readonly rejected: string[] = [];
  private readonly server: Server;
  private waiters: (() => void)[] = [];

  private constructor(server: Server) {
    this.server = server;
  }

  static async start(): Promise<OtlpReceiver> {
    const server = createServer();
    const receiver = new OtlpReceiver(server);
    server.on('request', (request, response) => {
      const chunks: Buffer[] = [];
      request.on('data', (chunk: Buffer) => chunks.push(chunk));
      request.on('end', () => {
        const type = request.headers['content-type'] ?? '';
        if (request.method !== 'POST' || !type.startsWith('application/json')) {
          receiver.rejected.push(`${request.method} ${request.url} ${type}`);
          response.writeHead(415).end();
          return;
        }
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        if (request.url === '/v1/traces') receiver.addTraces(body);
        else if (request.url === '/v1/metrics') receiver.addMetrics(body);
        else receiver.rejected.push(`POST ${request.url}`);
        response.writeHead(200, { 'content-type': 'application/json' }).end('{}');
        receiver.notify();
      });
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    return receiver;
  }

  /** The base URL for OTEL_EXPORTER_OTLP_ENDPOINT. */
  get endpoint(): string {
    const { port } = this.server.address() as AddressInfo;
    return `http://127.0.0.1:${port}`;
  }

  /** Resolves once the predicate holds over what was received; rejects after `seconds`. */
  async waitFor(predicate: (receiver: OtlpReceiver) => boolean, seconds = 20): Promise<void> {
    const deadline = Date.now() + seconds * 1000;
    while (!predicate(this)) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(
          `OTLP receiver: condition not met within ${seconds} s (spans: ${this.spans.map((s) => s.name).join(', ') || 'none'}; rejected: ${this.rejected.join(', ') || 'none'})`,
        );
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 250));
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    this.server.close();
    await once(this.server, 'close');
  }

  private notify(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }

  private addTraces(body: OtlpTraces): void {
    for (const resourceSpans of body.resourceSpans ?? []) {
      const serviceName = decodeAttributes(resourceSpans.resource?.attributes)['service.name'];
      for (const scopeSpans of resourceSpans.scopeSpans ?? []) {
        for (const span of scopeSpans.spans ?? []) {
          this.spans.push({
            traceId: span.traceId,
            spanId: span.spanId,
            parentSpanId: span.parentSpanId || undefined,
            name: span.name,
            kind: span.kind,
            attributes: decodeAttributes(span.attributes),
            statusCode: span.status?.code ?? 0,
            events: (span.events ?? []).map((event) => ({
              name: event.name,
              attributes: decodeAttributes(event.attributes),
            })),
            serviceName: typeof serviceName === 'string' ? serviceName : undefined,
          });
        }
      }
    }
  }

  private addMetrics(body: OtlpMetrics): void {
    for (const resourceMetrics of body.resourceMetrics ?? []) {
      for (const scopeMetrics of resourceMetrics.scopeMetrics ?? []) {
        for (const metric of scopeMetrics.metrics ?? []) {
          for (const point of metric.histogram?.dataPoints ?? []) {
            this.histogramPoints.push({
              metric: metric.name,
              unit: metric.unit ?? '',
              attributes: decodeAttributes(point.attributes),
              count: Number(point.count),
              sum: Number(point.sum ?? 0),
              explicitBounds: (point.explicitBounds ?? []).map(Number),
            });
          }
        }
      }
    }
  }
}

// The parts of the OTLP JSON encoding (opentelemetry-proto, JSON mapping) that the receiver reads.
interface OtlpAnyValue {
  stringValue?: string;
  boolValue?: boolean;
  intValue?: string | number;
  doubleValue?: number;
  arrayValue?: { values?: OtlpAnyValue[] };
}
interface OtlpKeyValue {
  key: string;
  value: OtlpAnyValue;
}
interface OtlpTraces {
  resourceSpans?: {
    resource?: { attributes?: OtlpKeyValue[] };
    scopeSpans?: {
      spans?: {
        traceId: string;
        spanId: string;
        parentSpanId?: string;
        name: string;
        kind: number;
        attributes?: OtlpKeyValue[];
        events?: { name: string; attributes?: OtlpKeyValue[] }[];
        status?: { code?: number };
      }[];
    }[];
  }[];
}
interface OtlpMetrics {
  resourceMetrics?: {
    scopeMetrics?: {
      metrics?: {
        name: string;
        unit?: string;
        histogram?: {
          dataPoints?: {
            attributes?: OtlpKeyValue[];
            count: string | number;
            sum?: number;
            explicitBounds?: (number | string)[];
          }[];
        };
      }[];
    }[];
  }[];
}

function decodeAttributes(attributes: OtlpKeyValue[] | undefined): Record<string, AttributeValue> {
  const decoded: Record<string, AttributeValue> = {};
  for (const { key, value } of attributes ?? []) decoded[key] = decodeValue(value);
  return decoded;
}

function decodeValue(value: OtlpAnyValue): AttributeValue {
  if (value.stringValue !== undefined) return value.stringValue;
  if (value.boolValue !== undefined) return value.boolValue;
  if (value.intValue !== undefined) return Number(value.intValue);
  if (value.doubleValue !== undefined) return value.doubleValue;
  if (value.arrayValue !== undefined) return (value.arrayValue.values ?? []).map(decodeValue);
  return undefined;
}
