// Placeholder until the gen-crd command lands; replaced by its owner.
export async function main(_argv: string[]): Promise<number> {
  console.error('earpiece gen-crd: not built yet');
  return 1;
}
