/* Window assignment, closing and watermark arithmetic. */
#include "node/state/window.h"

int64_t window_start(int64_t ts, int64_t size_ms)
{
    int64_t q = ts / size_ms;
    if (ts % size_ms != 0 && ts < 0)
        q--;
    return q * size_ms;
}

bool window_is_closed(const struct window_params *p, int64_t start, int64_t wm)
{
    if (wm == WATERMARK_NONE)
        return false;
    return start + p->size_ms + p->lateness_ms <= wm;
}

bool window_is_late(const struct window_params *p, int64_t ts, int64_t wm)
{
    return window_is_closed(p, window_start(ts, p->size_ms), wm);
}

int64_t window_advance(const struct window_params *p, int64_t wm, int64_t *max_ts, int64_t ts)
{
    if (*max_ts == WATERMARK_NONE || ts > *max_ts)
        *max_ts = ts;
    int64_t cand = *max_ts - p->out_of_orderness_ms;
    return cand > wm ? cand : wm;
}

int64_t window_idle_watermark(const struct window_params *p, int64_t wm, int64_t max_ts,
                              int64_t idle_ms)
{
    if (p->idle_timeout_ms <= 0 || max_ts == WATERMARK_NONE || idle_ms < p->idle_timeout_ms)
        return wm;
    /* Event time is assumed to flow with processing time while the partition is quiet. */
    int64_t cand = max_ts - p->out_of_orderness_ms + idle_ms;
    return cand > wm ? cand : wm;
}

bool window_closes_any(const struct window_params *p, int64_t from, int64_t to)
{
    if (to <= from)
        return false;
    if (from == WATERMARK_NONE)
        return true;
    /* The windows closed under wm are those with start <= wm - size - lateness. */
    int64_t a = window_start(from - p->size_ms - p->lateness_ms, p->size_ms);
    int64_t b = window_start(to - p->size_ms - p->lateness_ms, p->size_ms);
    return b > a;
}
