export * from './defaults.js';
export * from './duration.js';
export * from './load.js';
export * from './schema.js';
export * from './url-template.js';
export * from './validate.js';
export * from './values.js';
