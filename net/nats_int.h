/*
 * nats_int.h: what the NATS JetStream transport's files share (docs/design.md "NATS
 * transport"): the names a network uses on NATS (stream, subjects, consumers), the credentials
 * file `shop nats-credentials` writes, connecting through libnats, the queue that hands
 * messages from libnats's threads to a libuv loop, and the hooks server.c, stream.c and node.c
 * call. nats_conn.c owns the names, credentials, connection and queue; nats_pub.c the head
 * office's publisher and its answers to writes; nats_sub.c the branch node over NATS.
 */
#ifndef CS_NATS_INT_H
#define CS_NATS_INT_H

#include "net/net_int.h"

#include <nats/nats.h>
#include <pthread.h>

/* What a JetStream request or a publish acknowledgement may take before it is a failure. */
#define CS__NATS_WAIT_MS 5000u
/* A branch's consumer: redelivery of what it did not acknowledge, and at most this many
 * segments unacknowledged (what a branch holds in memory: 32 MiB at most). */
#define CS__NATS_ACK_WAIT_MS 5000u
#define CS__NATS_MAX_ACK_PENDING 32
/* Segments the publisher sends per pump before it lets the loop serve its TCP branches. */
#define CS__NATS_PUB_BUDGET 16u
/* The publisher's pause after a failed publish (NATS down, no quorum): retried by the tick. */
#define CS__NATS_RETRY_MS 1000u
/* A WRITE unanswered this long is sent again (the same request id: exactly once). */
#define CS__NATS_WRITE_RESEND_MS 5000u

/* The names of one network on NATS, all derived from its network id (the log id, the chain
 * value of event 1, as 16 lower-case hex digits): docs/protocol.md "NATS". */
typedef struct cs__nats_names {
    char net[17];         /* "0123456789abcdef" */
    char stream[24];      /* CS_<net> */
    char log_subj[48];    /* cs.<net>.log: every segment, in order */
    char write_all[48];   /* cs.<net>.write.*: what the head office answers */
    char write[64];       /* cs.<net>.write.<shop> */
    char reply[64];       /* cs.<net>.reply.<shop>: answers to the branch's writes */
    char inbox[64];       /* cs.<net>.inbox.<shop>: the branch's JetStream API replies */
    char deliver[64];     /* cs.<net>.deliver.<shop>: its push consumer's deliveries */
    char durable[32];     /* shop-<shop> */
    char description[64]; /* "chainsync network <net>": what a stream of ours says */
} cs__nats_names;

void cs__nats_names_make(uint64_t network, uint64_t shop, cs__nats_names *out);

/* A credentials file (JSON, written by cs_nats_credentials): the network and shop it is for,
 * and the NATS user and password. */
typedef struct cs__nats_creds {
    uint64_t network;
    uint64_t shop;
    char user[128];
    char password[128];
} cs__nats_creds;

/* Errors: CS_IO (cannot read), CS_INVALID_INPUT (not such a file). */
cs_err cs__nats_creds_load(const char *path, cs__nats_creds *out, char *errmsg, size_t len);

/* The code of a libnats failure: authentication and permission refusals are CS_AUTH_FAILED,
 * everything else about reaching NATS CS_NETWORK. */
cs_err cs__nats_code(natsStatus s);

/* Connects to url (comma-separated servers) as creds (NULL: no user), reconnecting forever in
 * the background; inbox (NULL: libnats's) prefixes every reply subject, so permissions can name
 * them; domain (NULL: none) is the JetStream domain of the stream's servers. Errors: CS_NETWORK, CS_AUTH_FAILED, CS_NO_MEMORY; errmsg says why. */
cs_err cs__nats_connect(const char *url, const cs__nats_creds *creds, const char *inbox,
                        const char *domain, const char *name, natsConnection **nc, jsCtx **js,
                        char *errmsg, size_t len);
void cs__nats_disconnect(natsConnection *nc, jsCtx *js); /* accepts NULL */

/* A header's unsigned value in base 10 or 16; false when missing or not a number. */
bool cs__nats_header_u64(natsMsg *m, const char *key, int base, uint64_t *out);

/* Messages handed from libnats's delivery threads to a loop: push (any thread) appends and
 * wakes the loop, whose drain callback pops them in order. Bounded by what the subscriptions
 * may have outstanding (the consumer's MaxAckPending, one write answer at a time). */
typedef struct cs__natsq cs__natsq;
typedef void (*cs__natsq_fn)(void *owner);

cs_err cs__natsq_new(uv_loop_t *loop, cs__natsq_fn drain, void *owner, cs__natsq **out);
/* A natsMsgHandler whose closure is the queue: takes msg. After close it destroys msg. */
void cs__natsq_handler(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *q);
natsMsg *cs__natsq_pop(cs__natsq *q); /* NULL when empty; the caller destroys it */
/* Refuses further pushes, destroys what is queued, closes the wake-up handle and frees the
 * queue once it has closed. Call after the subscriptions feeding it are gone. */
void cs__natsq_close(cs__natsq *q);

/* ---- hooks (server.c, stream.c, node.c) ----------------------------------------------- */

typedef struct cs__natspub cs__natspub;

/* serve --nats: connects, creates or checks the stream, reads back the last published segment
 * and subscribes to the writes. Errors: CS_NETWORK, CS_AUTH_FAILED, CS_CORRUPT (the stream holds
 * what this log does not), CS_FORBIDDEN (a stream of another network under our name). */
cs_err cs__natspub_start(cs__server *s, const cs_nats_options *o, cs__natspub **out, char *errmsg,
                         size_t len);
/* Publishes the segments past the last published, up to s->head (bounded per call). */
void cs__natspub_pump(cs__server *s, cs__natspub *p, cs_log_reader *r);
/* Once per tick: a failed publish is retried, an unfinished catch-up continues. */
void cs__natspub_tick(cs__server *s, cs__natspub *p, uint64_t now);
void cs__natspub_stop(cs__natspub *p); /* accepts NULL */

/* The branch node over NATS, behind a cs_node (node.c forwards to it). */
typedef struct cs__natsnode cs__natsnode;

/* Whether a node on b should use NATS: opts->nats is set, or the stored link is a NATS one. */
bool cs__nats_wanted(cs_branch *b, const cs_node_options *o);
cs_err cs__natsnode_start(uv_loop_t *loop, cs_branch *b, const char *dir, const cs_node_options *o,
                          cs_node *outer, cs_node_done_fn done, void *arg, char *errmsg,
                          size_t errmsg_len, cs__natsnode **out);
void cs__natsnode_stop(cs__natsnode *nn);
/* After done: closes its handles; then frees nn and outer (calloc'd by node.c). */
void cs__natsnode_free(cs__natsnode *nn, cs_node *outer);
uint64_t cs__natsnode_cursor(const cs__natsnode *nn);

#endif
