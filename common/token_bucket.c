/* Token buckets for the per-tenant quotas (see token_bucket.h). */
#include "common/token_bucket.h"

#include <math.h>

bool token_bucket_take(struct token_bucket *b, double rate, double burst, double n,
                       int64_t now_ns, int64_t *retry_ms)
{
    if (rate <= 0)
        return true;
    if (burst < 1)
        burst = 1;
    if (!b->started) {
        b->started = true;
        b->tokens = burst;
        b->last_ns = now_ns;
    } else if (now_ns > b->last_ns) {
        b->tokens += (double)(now_ns - b->last_ns) / 1e9 * rate;
        if (b->tokens > burst)
            b->tokens = burst;
        b->last_ns = now_ns;
    }
    double need = n < burst ? n : burst;
    if (b->tokens >= need) {
        b->tokens -= n;
        return true;
    }
    if (retry_ms) {
        double ms = ceil((need - b->tokens) / rate * 1000.0 - 1e-6); /* not 2 for 1.0000001 */
        *retry_ms = ms < 1 ? 1 : ms > 3600000 ? 3600000 : (int64_t)ms;
    }
    return false;
}
