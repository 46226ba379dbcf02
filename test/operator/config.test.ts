import { describe, expect, it } from 'vitest';
import { HELP, loadConfig } from '../../src/operator/config.js';
import { DEFAULT_SIDECAR } from '../../src/operator/sidecar.js';

describe('operator settings', () => {
  it('has the documented defaults', () => {
    const { config, help } = loadConfig([], { HOSTNAME: 'earpiece-7f-abc' });
    expect(help).toBe(false);
    expect(config).toEqual({
      namespace: 'earpiece-system',
      podName: 'earpiece-7f-abc',
      watchNamespaces: [],
      excludeNamespaces: ['kube-system', 'kube-public', 'kube-node-lease'],
      leaderElection: true,
      leaseName: 'earpiece-operator',
      instance: 'earpiece',
      webhookPort: 9443,
      probePort: 8081,
      metricsPort: 8080,
      webhookConfigName: 'earpiece-webhook',
      webhookServiceName: 'earpiece-webhook',
      certMode: 'operator',
      certSecretName: 'earpiece-webhook-tls',
      certDir: '/etc/earpiece/certs',
      shutdownGraceMs: 5000,
      sidecar: DEFAULT_SIDECAR,
      nativeSidecarAuto: true,
      toolsetSecretAccessCheck: true,
      webhookMaxBodyBytesInFlight: 24 * 1024 * 1024,
    });
  });

  it('reads the environment the chart sets, and flags win over it', () => {
    const env = {
      EARPIECE_NAMESPACE: 'ops',
      EARPIECE_POD_NAME: 'earpiece-0',
      EARPIECE_WATCH_NAMESPACES: 'voice, kitchen ,',
      EARPIECE_EXCLUDE_NAMESPACES: 'kube-system,ops',
      EARPIECE_LEADER_ELECTION: 'false',
      EARPIECE_LEASE_NAME: 'ops-earpiece-controller',
      EARPIECE_INSTANCE: 'ops-earpiece',
      EARPIECE_WEBHOOK_PORT: '10443',
      EARPIECE_CERT_MODE: 'cert-manager',
      EARPIECE_CERT_DIR: '/certs',
      EARPIECE_SHUTDOWN_GRACE: '1m30s',
      EARPIECE_SIDECAR_IMAGE: 'registry.example.com/earpiece:dev',
      EARPIECE_SIDECAR_RESOURCES: '{"requests":{"cpu":"10m"}}',
      EARPIECE_NATIVE_SIDECAR: 'false',
      EARPIECE_TOOLSET_SECRET_ACCESS_CHECK: 'false',
      EARPIECE_WEBHOOK_MAX_BODY_BYTES_IN_FLIGHT: '67108864',
    };
    const { config } = loadConfig(
      ['--webhook-port', '11443', '--native-sidecar=true', '--namespace=flagged'],
      env,
    );
    expect(config).toMatchObject({
      namespace: 'flagged',
      podName: 'earpiece-0',
      watchNamespaces: ['voice', 'kitchen'],
      excludeNamespaces: ['kube-system', 'ops'],
      leaderElection: false,
      leaseName: 'ops-earpiece-controller',
      instance: 'ops-earpiece',
      webhookPort: 11443,
      certMode: 'cert-manager',
      certDir: '/certs',
      shutdownGraceMs: 90_000,
      toolsetSecretAccessCheck: false,
      webhookMaxBodyBytesInFlight: 64 * 1024 * 1024,
    });
    expect(
      loadConfig(['--webhook-max-body-bytes-in-flight', '1048576'], env).config.webhookMaxBodyBytesInFlight,
    ).toBe(1024 * 1024);
    expect(loadConfig(['--toolset-secret-access-check=true'], env).config.toolsetSecretAccessCheck).toBe(
      true,
    );
    expect(loadConfig(['--shutdown-grace=0s'], env).config.shutdownGraceMs).toBe(0);
    expect(config.sidecar).toMatchObject({
      image: 'registry.example.com/earpiece:dev',
      resources: { requests: { cpu: '10m' } },
      nativeSidecar: true,
    });
    // An explicit value wins over the API server's version; auto (or nothing) leaves it to the server.
    expect(config.nativeSidecarAuto).toBe(false);
    expect(loadConfig([], { EARPIECE_NATIVE_SIDECAR: 'auto' }).config).toMatchObject({
      nativeSidecarAuto: true,
      sidecar: { nativeSidecar: true },
    });
    expect(
      loadConfig([], { EARPIECE_SIDECAR_IMAGE_PULL_SECRETS: '[{"name":"regcred"},"mirror"]' }).config.sidecar,
    ).toMatchObject({ imagePullSecrets: ['regcred', 'mirror'] });
    expect(() => loadConfig([], { EARPIECE_SIDECAR_IMAGE_PULL_SECRETS: 'regcred' })).toThrow(
      'EARPIECE_SIDECAR_IMAGE_PULL_SECRETS: is not a JSON list of secret references',
    );
  });

  it('names the setting at fault', () => {
    expect(() => loadConfig([], { EARPIECE_PROBE_PORT: 'eighty' })).toThrow(
      'EARPIECE_PROBE_PORT: "eighty" is not a port',
    );
    expect(() => loadConfig(['--cert-mode', 'vault'], {})).toThrow(
      '--cert-mode: "vault" is not operator or cert-manager',
    );
    expect(() => loadConfig([], { EARPIECE_LEADER_ELECTION: 'maybe' })).toThrow(
      'EARPIECE_LEADER_ELECTION: "maybe" is not true or false',
    );
    expect(() => loadConfig(['--toolset-secret-access-check=off'], {})).toThrow(
      '--toolset-secret-access-check: "off" is not true or false',
    );
    expect(() => loadConfig([], { EARPIECE_SIDECAR_RESOURCES: '{"requests":' })).toThrow(
      /EARPIECE_SIDECAR_RESOURCES/,
    );
    expect(() => loadConfig([], { EARPIECE_SHUTDOWN_GRACE: '5' })).toThrow(
      'EARPIECE_SHUTDOWN_GRACE: "5" is not a duration (e.g. 5s, 0s)',
    );
    for (const bad of ['24Mi', '0', '-1', '1.5', '1e6', '', '99999999999999999999']) {
      expect(() => loadConfig([], { EARPIECE_WEBHOOK_MAX_BODY_BYTES_IN_FLIGHT: bad })).toThrow(
        `EARPIECE_WEBHOOK_MAX_BODY_BYTES_IN_FLIGHT: "${bad}" is not a positive whole number of bytes`,
      );
    }
    expect(() => loadConfig(['--webhook-max-body-bytes-in-flight=lots'], {})).toThrow(
      '--webhook-max-body-bytes-in-flight: "lots" is not a positive whole number of bytes',
    );
    expect(() => loadConfig(['--no-such-flag'], {})).toThrow(/no-such-flag/);
    let caught: unknown;
    try {
      loadConfig([], { EARPIECE_METRICS_PORT: '0' });
    } catch (err) {
      caught = err;
    }
    expect(caught).toMatchObject({ code: 'ERP_CONFIG', message: 'EARPIECE_METRICS_PORT: "0" is not a port' });
  });

  it('lists every variable in --help', () => {
    expect(loadConfig(['--help'], {}).help).toBe(true);
    for (const name of [
      'EARPIECE_WATCH_NAMESPACES',
      'EARPIECE_CERT_MODE',
      'EARPIECE_NATIVE_SIDECAR',
      'EARPIECE_SHUTDOWN_GRACE',
      'EARPIECE_TOOLSET_SECRET_ACCESS_CHECK',
      'EARPIECE_WEBHOOK_MAX_BODY_BYTES_IN_FLIGHT',
      '--lease-name',
    ]) {
      expect(HELP).toContain(name);
    }
  });
});
