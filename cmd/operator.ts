// Placeholder until the operator command lands; replaced by its owner.
export async function main(_argv: string[]): Promise<number> {
  console.error('earpiece operator: not built yet');
  return 1;
}
