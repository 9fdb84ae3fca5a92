/* Structured logging: one line per event on stderr, "ts=... level=... msg=... k=v".
 * Thread-safe (one fprintf per line). The level is process-wide and set once at start. */
#ifndef EDDY_LOG_H
#define EDDY_LOG_H

/* LOG_AUDIT lines (the admin calls' audit trail) are printed whatever the level. */
enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_AUDIT };

/* Set the minimum level from "debug", "info", "warn" or "error"; returns 0, or -1 if the
 * name is unknown. */
int log_set_level(const char *name);

/* Log 'fmt' (printf-style, usually "msg=... key=value ...") at 'level'. */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_audit(...) log_msg(LOG_AUDIT, __VA_ARGS__)

#endif
