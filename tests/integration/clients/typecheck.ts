// Type-checked (tsc --noEmit --strict) against the installed package's index.d.ts by
// test_client_packages.py: the calls an application makes, and one it must not make.
import { Client, EddyError, IngestResult, RecommendResponse, event } from 'eddy-client';

async function use(): Promise<number> {
  const c = new Client('127.0.0.1:7070', { batchSize: 100, retries: 3, token: 't',
                                          onRetry: (r) => { void r.codeName; void r.delayMs; } });
  const r: IngestResult = await c.ingest([event('u-1', 'view', 'p-1', { category: 'books' })]);
  const added: IngestResult | null = await c.add(event('u-1', 'EVENT_TYPE_PURCHASE', 'p-1'));
  const rec: RecommendResponse = await c.recommend('u-1', { limit: 5, cart: ['p-2'],
                                                           exclude: 'EXCLUSION_PURCHASED' });
  const views: string[] = (await c.getUserProfile('u-1')).profile.recent_views.map((v) => v.product_id);
  const top = await c.topProducts({ category: 'books', includeOpen: true, eventType: 'view' });
  const counts = await c.eventCounts({ userId: 'u-1' });
  try {
    await c.deleteUser('u-1');
  } catch (e) {
    if (e instanceof EddyError) return e.retryAfterMs;
  }
  await c.close();
  return r.accepted + (added ? added.batches : 0) + rec.items.length + views.length
    + top.products.length + counts.windows.length;
}
void use;
