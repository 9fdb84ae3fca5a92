/* Event-time tumbling windows, watermarks and lateness (docs/design.md §5). Pure functions.
 *
 * The watermark W of a partition promises that no more events with time < W are expected:
 * W = max event time seen - out-of-orderness (and processing-time idle advances). A window
 * [start, start + size) is closed, final and queryable once start + size + lateness <= W.
 * An event whose window is already closed when it arrives is late. */
#ifndef EDDY_WINDOW_H
#define EDDY_WINDOW_H

#include <stdbool.h>
#include <stdint.h>

#define WATERMARK_NONE INT64_MIN /* a partition that has seen no event */

struct window_params {
    int64_t size_ms;           /* window length (60 s) */
    int64_t out_of_orderness_ms; /* bound on disorder (5 s) */
    int64_t lateness_ms;       /* allowed lateness after the watermark (0) */
    int64_t idle_timeout_ms;   /* processing time without events before the watermark
                                  advances by itself (0 = never) */
};

/* Start of the window containing 'ts'. */
int64_t window_start(int64_t ts, int64_t size_ms);

/* Whether the window starting at 'start' is closed under watermark 'wm'. */
bool window_is_closed(const struct window_params *p, int64_t start, int64_t wm);

/* Whether an event at 'ts' is late under watermark 'wm' (its window is closed). */
bool window_is_late(const struct window_params *p, int64_t ts, int64_t wm);

/* The watermark after seeing an event at 'ts', given the current watermark and the max
 * event time so far (updated in *max_ts). Never moves backwards. */
int64_t window_advance(const struct window_params *p, int64_t wm, int64_t *max_ts, int64_t ts);

/* Idle advance: the watermark a partition should have after 'idle_ms' of processing time
 * without events, or 'wm' itself if the idle timeout has not passed. */
int64_t window_idle_watermark(const struct window_params *p, int64_t wm, int64_t max_ts,
                              int64_t idle_ms);

/* Whether moving from 'from' to 'to' closes at least one more window (a cheap test to
 * decide if an idle advance is worth a log record). */
bool window_closes_any(const struct window_params *p, int64_t from, int64_t to);

#endif
