/*
 * nats_stream_check.c: reads a network's JetStream stream back, message by message, and checks
 * what serve --nats promises (net/net.h, "NATS JetStream transport"; issue 15): every message
 * is one segment whose bytes verify (checksums, and the chain from the previous message's last
 * event), its Cs-First is the previous message's Cs-Last + 1 (no gap, no duplicate, no
 * reordering), its Cs-Last and Cs-Chain headers say what the segment holds, and the first
 * segment starts at event 1. Used by tests/test_nats.sh, which starts the servers.
 *
 *   nats_stream_check URL CREDS STREAM   prints "messages N events L" and exits 0, or names the
 *                                        first message that breaks a promise and exits 1
 *   nats_stream_check URL - STREAM purge SEQ   removes the messages before stream sequence SEQ
 *                                        (an operator's purge: what makes a gap for a branch)
 *
 * CREDS is a credentials file of `shop nats-credentials`, or "-" for a server without users.
 */
#include "log/log.h"

#include <inttypes.h>
#include <jansson.h>
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool header_u64(natsMsg *m, const char *key, int base, uint64_t *out)
{
    const char *v = NULL;
    char *end = NULL;
    if (natsMsgHeader_Get(m, key, &v) != NATS_OK || !v || !*v)
        return false;
    *out = strtoull(v, &end, base);
    return *end == '\0';
}

/* One message: its headers against its segment, and the segment against what came before. */
static bool check_msg(natsMsg *m, uint64_t sseq, uint64_t *prev_last, uint64_t *prev_chain)
{
    uint64_t first, last, chain;
    if (!header_u64(m, "Cs-First", 10, &first) || !header_u64(m, "Cs-Last", 10, &last) ||
        !header_u64(m, "Cs-Chain", 16, &chain)) {
        printf("message %" PRIu64 ": Cs-First, Cs-Last or Cs-Chain missing\n", sseq);
        return false;
    }
    if (first != *prev_last + 1) {
        printf("message %" PRIu64 ": starts at event %" PRIu64 ", the previous ended at %" PRIu64
               " (%s)\n",
               sseq, first, *prev_last, first <= *prev_last ? "duplicate" : "gap");
        return false;
    }
    cs_segment_view v;
    cs_log_record rec = {0};
    cs_err err =
        cs_segment_open((const uint8_t *)natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &v);
    if (err == CS_OK) {
        v.prev_chain = *prev_chain;
        v.prev_chain_known = *prev_last > 0;
    }
    uint64_t n = 0, seq = 0, c = 0;
    while (err == CS_OK && (err = cs_segment_next(&v, &rec)) == CS_OK) {
        seq = rec.seq;
        c = rec.chain;
        n++;
    }
    if (err != CS_NOT_FOUND || v.first != first || seq != last || c != chain ||
        n != last - first + 1) {
        printf("message %" PRIu64 ": the segment does not verify or is not events %" PRIu64
               "..%" PRIu64 "\n",
               sseq, first, last);
        return false;
    }
    *prev_last = last;
    *prev_chain = chain;
    return true;
}

int main(int argc, char **argv)
{
    bool purge = argc == 6 && strcmp(argv[4], "purge") == 0;
    if (argc != 4 && !purge) {
        fprintf(stderr, "usage: nats_stream_check URL CREDS|- STREAM [purge SEQ]\n");
        return 2;
    }
    json_t *cj = strcmp(argv[2], "-") == 0 ? NULL : json_load_file(argv[2], 0, NULL);
    const char *user = NULL, *pw = NULL;
    if (strcmp(argv[2], "-") != 0 &&
        (!cj || json_unpack(cj, "{s:s,s:s}", "user", &user, "password", &pw) != 0)) {
        fprintf(stderr, "cannot read %s\n", argv[2]);
        return 2;
    }
    natsOptions *o = NULL;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsStatus s = natsOptions_Create(&o);
    const char *servers[8];
    int n = 0;
    for (char *save = NULL, *t = strtok_r(argv[1], ",", &save); t && n < 8;
         t = strtok_r(NULL, ",", &save))
        servers[n++] = t;
    if (s == NATS_OK)
        s = natsOptions_SetServers(o, servers, n);
    if (s == NATS_OK && user)
        s = natsOptions_SetUserInfo(o, user, pw);
    if (s == NATS_OK)
        s = natsConnection_Connect(&nc, o);
    if (s == NATS_OK)
        s = natsConnection_JetStream(&js, nc, NULL);
    if (s == NATS_OK && purge) {
        jsOptions jo;
        jsOptions_Init(&jo);
        jo.Stream.Purge.Sequence = strtoull(argv[5], NULL, 10);
        s = js_PurgeStream(js, argv[3], &jo, NULL);
        printf("purge before %s: %s\n", argv[5], natsStatus_GetText(s));
        jsCtx_Destroy(js);
        natsConnection_Destroy(nc);
        natsOptions_Destroy(o);
        nats_Close();
        return s == NATS_OK ? 0 : 1;
    }
    jsStreamInfo *si = NULL;
    if (s == NATS_OK)
        s = js_GetStreamInfo(&si, js, argv[3], NULL, NULL);
    if (s != NATS_OK) {
        printf("cannot read stream %s at %s: %s\n", argv[3], argv[1], natsStatus_GetText(s));
        return 1;
    }
    uint64_t last_seq = si->State.LastSeq, msgs = si->State.Msgs, prev_last = 0, prev_chain = 0;
    jsStreamInfo_Destroy(si);
    bool ok = msgs == last_seq; /* nothing deleted: DenyDelete, and no limits reached */
    if (!ok)
        printf("stream holds %" PRIu64 " messages but its last sequence is %" PRIu64 "\n", msgs,
               last_seq);
    for (uint64_t q = 1; ok && q <= last_seq; q++) {
        natsMsg *m = NULL;
        if ((s = js_GetMsg(&m, js, argv[3], q, NULL, NULL)) != NATS_OK) {
            printf("cannot read message %" PRIu64 ": %s\n", q, natsStatus_GetText(s));
            ok = false;
        } else {
            ok = check_msg(m, q, &prev_last, &prev_chain);
        }
        natsMsg_Destroy(m);
    }
    if (ok)
        printf("messages %" PRIu64 " events %" PRIu64 "\n", last_seq, prev_last);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    natsOptions_Destroy(o);
    json_decref(cj);
    nats_Close();
    return ok ? 0 : 1;
}
