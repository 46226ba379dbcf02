export * from './api.js';
export * from './check.js';
export * from './defaults.js';
export * from './duration.js';
export * from './load.js';
export type * from './schema.js';
export * from './url-template.js';
export * from './validate.js';
export * from './values.js';
