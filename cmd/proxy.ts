// Placeholder until the proxy command lands; replaced by its owner.
export async function main(_argv: string[]): Promise<number> {
  console.error('earpiece proxy: not built yet');
  return 1;
}
