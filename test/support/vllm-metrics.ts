/**
 * vLLM's own Prometheus metrics as a scripted upstream serves them: the names, labels (`model_name`,
 * `engine`) and bucket edges of vLLM V1 (vllm/v1/metrics/loggers.py), so dashboard panels that set the proxy
 * beside vLLM have real series to show.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

export const VLLM_TTFT_BUCKETS = [
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640,
  2560,
];
const VLLM_REQUEST_BUCKETS = [
  0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680,
];

/** The sample names a dashboard may use (histograms by their series). */
export const VLLM_METRIC_NAMES = [
  'vllm:time_to_first_token_seconds_bucket',
  'vllm:time_to_first_token_seconds_sum',
  'vllm:time_to_first_token_seconds_count',
  'vllm:e2e_request_latency_seconds_bucket',
  'vllm:e2e_request_latency_seconds_sum',
  'vllm:e2e_request_latency_seconds_count',
  'vllm:num_requests_running',
  'vllm:num_requests_waiting',
  'vllm:prompt_tokens_total',
  'vllm:generation_tokens_total',
  'vllm:request_success_total',
];

export class VllmMetrics {
  private readonly registry = new Registry();
  private rendered = '';
  private readonly labels: { model_name: string; engine: string };
  private readonly ttft: Histogram<'model_name' | 'engine'>;
  private readonly e2e: Histogram<'model_name' | 'engine'>;
  private readonly prompt: Counter<'model_name' | 'engine'>;
  private readonly generation: Counter<'model_name' | 'engine'>;
  private readonly success: Counter<'model_name' | 'engine' | 'finished_reason'>;

  constructor(model: string) {
    this.labels = { model_name: model, engine: '0' };
    const registers = [this.registry];
    const labelNames = ['model_name', 'engine'] as const;
    this.ttft = new Histogram({
      name: 'vllm:time_to_first_token_seconds',
      help: 'Histogram of time to first token in seconds.',
      labelNames,
      buckets: VLLM_TTFT_BUCKETS,
      registers,
    });
    this.e2e = new Histogram({
      name: 'vllm:e2e_request_latency_seconds',
      help: 'Histogram of e2e request latency in seconds.',
      labelNames,
      buckets: VLLM_REQUEST_BUCKETS,
      registers,
    });
    for (const name of ['vllm:num_requests_running', 'vllm:num_requests_waiting']) {
      new Gauge({ name, help: 'Number of requests.', labelNames, registers }).set(this.labels, 0);
    }
    this.prompt = new Counter({
      name: 'vllm:prompt_tokens_total',
      help: 'Number of prefill tokens processed.',
      labelNames,
      registers,
    });
    this.generation = new Counter({
      name: 'vllm:generation_tokens_total',
      help: 'Number of generation tokens processed.',
      labelNames,
      registers,
    });
    this.success = new Counter({
      name: 'vllm:request_success_total',
      help: 'Count of successfully processed requests.',
      labelNames: [...labelNames, 'finished_reason'],
      registers,
    });
    this.render();
  }

  /** One request as the engine would count it. */
  request(ttftSeconds: number, e2eSeconds: number, finishedReason: 'stop' | 'length' = 'stop'): void {
    this.ttft.observe(this.labels, ttftSeconds);
    this.e2e.observe(this.labels, e2eSeconds);
    this.prompt.inc(this.labels, 120);
    this.generation.inc(this.labels, 24);
    this.success.inc({ ...this.labels, finished_reason: finishedReason });
    this.render();
  }

  /** The exposition text as of the last request (rendered ahead, since the upstream serves it synchronously). */
  text(): string {
    return this.rendered;
  }

  private render(): void {
    void this.registry.metrics().then((text) => {
      this.rendered = text;
    });
  }
}
