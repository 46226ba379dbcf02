/** The codes of the operator's and `earpiece inject`'s errors. docs/errors.md lists exactly these (test/errors.test.ts). */
export const OPERATOR_ERRORS = {
  ERP_CONFIG:
    "The operator's configuration (environment or flags) is invalid; the message names the variable.",
  ERP_SIDECAR_CONFIG: 'A sidecar setting (`EARPIECE_SIDECAR_*`, `EARPIECE_NATIVE_SIDECAR`) is invalid.',
  ERP_CERT: 'A webhook certificate could not be created, read or stored.',
  ERP_MANIFEST: '`earpiece inject` was given a manifest it cannot read.',
  ERP_INJECT_INPUT:
    '`earpiece inject` cannot use an input: a file cannot be read, or a ToolSet file is invalid.',
} as const;

export type OperatorErrorCode = keyof typeof OPERATOR_ERRORS;
