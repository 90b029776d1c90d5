/*
 * http.c: the HTTP listener of `serve --http` and `branch follow --http`, on libmicrohttpd (its
 * own polling thread; no HTTP parsing here). It answers GET only, from the snapshot the loop
 * publishes (metrics.c): /metrics, and on a head office /api/shops, /api/history and the
 * Managing shops page (net/shops_page.html, embedded at build time). It changes nothing and
 * reads nothing else: never an LMDB handle nor the loop's libuv state (docs/design.md,
 * "Metrics"). Owns the MHD daemon and its bound address.
 */
#include "net/net_int.h"
#include "shops_page.h" /* generated from net/shops_page.html: cs__shops_page */

#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>

struct cs__http {
    struct MHD_Daemon *d;
    cs__snapshot *snap;
    bool page;
};

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *type,
                             void *body, size_t len, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
    if (!r) {
        if (mode == MHD_RESPMEM_MUST_FREE)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    /* a page that shows data: never framed by another site, scripts of its own only */
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "X-Frame-Options", "DENY");
    enum MHD_Result ok = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result text_reply(struct MHD_Connection *conn, unsigned status, const char *msg)
{
    return reply(conn, status, "text/plain; charset=utf-8", (void *)msg, strlen(msg),
                 MHD_RESPMEM_PERSISTENT);
}

static enum MHD_Result doc_reply(cs__http *h, struct MHD_Connection *conn, cs__doc d,
                                 const char *type)
{
    size_t len = 0;
    char *body = cs__snapshot_copy(h->snap, d, &len);
    if (!body)
        return text_reply(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "not ready yet: try again\n");
    return reply(conn, MHD_HTTP_OK, type, body, len, MHD_RESPMEM_MUST_FREE);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    (void)upload_data;
    cs__http *h = cls;
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return text_reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "read-only: GET only\n");
    if (*con_cls == NULL) { /* the first call is for the headers alone */
        *con_cls = h;
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        *upload_data_size = 0; /* a GET with a body: ignored */
        return MHD_YES;
    }
    if (strcmp(url, "/metrics") == 0)
        return doc_reply(h, conn, CS__DOC_METRICS, "text/plain; version=0.0.4; charset=utf-8");
    if (h->page && strcmp(url, "/api/shops") == 0)
        return doc_reply(h, conn, CS__DOC_SHOPS, "application/json");
    if (h->page && strcmp(url, "/api/history") == 0)
        return doc_reply(h, conn, CS__DOC_HISTORY, "application/json");
    if (h->page && (strcmp(url, "/") == 0 || strcmp(url, "/index.html") == 0))
        return reply(conn, MHD_HTTP_OK, "text/html; charset=utf-8", (void *)cs__shops_page,
                     sizeof(cs__shops_page) - 1, MHD_RESPMEM_PERSISTENT);
    return text_reply(conn, MHD_HTTP_NOT_FOUND, "not found\n");
}

/* "PORT" alone binds loopback: exposing the listener takes an explicit address. */
static cs_err http_addr(const char *hostport, struct sockaddr_storage *addr)
{
    char buf[300];
    if (hostport && strchr(hostport, ':') == NULL) {
        snprintf(buf, sizeof(buf), "127.0.0.1:%s", hostport);
        hostport = buf;
    }
    return cs__parse_addr(hostport, addr);
}

static void bound_name(cs__http *h, const struct sockaddr_storage *addr, char *out, size_t len)
{
    const union MHD_DaemonInfo *port = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    char ip[INET6_ADDRSTRLEN] = "?";
    if (addr->ss_family == AF_INET)
        uv_ip4_name((const struct sockaddr_in *)addr, ip, sizeof(ip));
    else
        uv_ip6_name((const struct sockaddr_in6 *)addr, ip, sizeof(ip));
    snprintf(out, len, addr->ss_family == AF_INET ? "%s:%u" : "[%s]:%u", ip,
             port ? (unsigned)port->port : 0u);
}

static cs_err write_ready(const char *path, const char *bound)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return CS_IO;
    bool ok = fprintf(f, "%s\n", bound) >= 0;
    ok = fclose(f) == 0 && ok;
    return ok && rename(tmp, path) == 0 ? CS_OK : CS_IO;
}

cs_err cs__http_start(const char *hostport, cs__snapshot *snap, bool page, const char *ready_file,
                      char *bound, size_t bound_len, cs__http **out, char *errmsg,
                      size_t errmsg_len)
{
    struct sockaddr_storage addr;
    if (http_addr(hostport, &addr) != CS_OK) {
        snprintf(errmsg, errmsg_len, "--http wants HOST:PORT or PORT, not '%s'",
                 hostport ? hostport : "");
        return CS_INVALID_INPUT;
    }
    cs__http *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(errmsg, errmsg_len, "out of memory");
        return CS_NO_MEMORY;
    }
    h->snap = snap;
    h->page = page;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    if (addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    uint16_t port = ntohs(((struct sockaddr_in *)&addr)->sin_port); /* same offset in v6 */
    h->d = MHD_start_daemon(flags, port, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR,
                            (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_LIMIT, 64u,
                            MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
    if (!h->d) {
        snprintf(errmsg, errmsg_len, "cannot listen for HTTP on %s", hostport);
        free(h);
        return CS_NETWORK;
    }
    bound_name(h, &addr, bound, bound_len);
    if (ready_file && write_ready(ready_file, bound) != CS_OK) {
        snprintf(errmsg, errmsg_len, "cannot write %s", ready_file);
        cs__http_stop(h);
        return CS_IO;
    }
    *out = h;
    return CS_OK;
}

void cs__http_stop(cs__http *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->d);
    free(h);
}
