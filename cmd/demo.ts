// Placeholder until the demo command lands; replaced by its owner.
export async function main(_argv: string[]): Promise<number> {
  console.error('earpiece demo: not built yet');
  return 1;
}
