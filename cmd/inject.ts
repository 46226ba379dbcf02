// Placeholder until the inject command lands; replaced by its owner.
export async function main(_argv: string[]): Promise<number> {
  console.error('earpiece inject: not built yet');
  return 1;
}
