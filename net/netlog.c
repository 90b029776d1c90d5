/*
 * netlog.c: the log lines of `serve` and `branch follow` (and of join and pull): one line per
 * event that matters, human ("<UTC time> <who>: <message>", as before this module) or one JSON
 * object per line, filtered by level. Owns nothing but the formatting: the settings live in a
 * cs__netlog inside the server's or the node's handle (no global state), and lines go to the
 * FILE the caller chose (stderr by default), flushed at once so a supervisor sees them live.
 */
#include "net/net_int.h"

#include <jansson.h>
#include <string.h>
#include <time.h>

static const char *const level_names[] = {"info", "error", "warn", "info", "debug"};

cs_err cs_net_log_level_parse(const char *s, cs_net_log_level *out)
{
    for (int l = CS_NET_LOG_ERROR; l <= CS_NET_LOG_DEBUG; l++)
        if (s && strcmp(s, level_names[l]) == 0) {
            *out = (cs_net_log_level)l;
            return CS_OK;
        }
    return CS_INVALID_INPUT;
}

cs_err cs_net_log_format_parse(const char *s, cs_net_log_format *out)
{
    if (s && strcmp(s, "human") == 0)
        *out = CS_NET_LOG_HUMAN;
    else if (s && strcmp(s, "json") == 0)
        *out = CS_NET_LOG_JSON;
    else
        return CS_INVALID_INPUT;
    return CS_OK;
}

void cs__netlog_init(cs__netlog *l, FILE *out, const char *who, cs_net_log_level level,
                     cs_net_log_format format)
{
    l->out = out ? out : stderr;
    l->who = who;
    l->level = level == CS_NET_LOG_DEFAULT ? CS_NET_LOG_INFO : level;
    l->json = format == CS_NET_LOG_JSON;
}

bool cs__netlog_on(const cs__netlog *l, cs_net_log_level level)
{
    return level <= l->level;
}

/* One JSON line; jansson escapes the message (a shop name or a peer's ERROR text). */
static void json_line(const cs__netlog *l, cs_net_log_level level, const char *event, uint64_t shop,
                      cs_err code, const char *msg)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    char when[40], stamp[64];
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", gmtime_r(&ts.tv_sec, &tm));
    snprintf(stamp, sizeof(stamp), "%s.%03ldZ", when, ts.tv_nsec / 1000000L);
    json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:s}", "time", stamp, "level", level_names[level],
                          "who", l->who, "event", event, "msg", msg);
    if (o && shop)
        json_object_set_new(o, "shop", json_integer((json_int_t)shop));
    if (o && code != CS_OK)
        json_object_set_new(o, "code", json_string(cs_err_name(code)));
    char *line = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    if (line) {
        fprintf(l->out, "%s\n", line);
        fflush(l->out);
    } else { /* out of memory: the line still goes out, unstructured */
        fprintf(l->out, "%s %s: %s\n", stamp, l->who, msg);
        fflush(l->out);
    }
    free(line);
    json_decref(o);
}

static void human_line(const cs__netlog *l, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void human_line(const cs__netlog *l, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cs__net_vlogf(l->out, l->who, fmt, ap);
    va_end(ap);
}

void cs__netlog_v(const cs__netlog *l, cs_net_log_level level, const char *event, uint64_t shop,
                  cs_err code, const char *fmt, va_list ap)
{
    if (!cs__netlog_on(l, level))
        return;
    char msg[1024];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    if (l->json)
        json_line(l, level, event, shop, code, msg);
    else
        human_line(l, "%s", msg);
}

void cs__netlog_emit(const cs__netlog *l, cs_net_log_level level, const char *event, uint64_t shop,
                     cs_err code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cs__netlog_v(l, level, event, shop, code, fmt, ap);
    va_end(ap);
}
