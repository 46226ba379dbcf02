/** The ToolSet's API coordinates, kept apart from schema.ts so run-time code can use them without TypeBox. */
export const API_GROUP = 'earpiece.dev';
export const API_VERSION = 'v1alpha1';
export const KIND = 'ToolSet';
