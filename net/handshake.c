/*
 * handshake.c: the pieces of docs/protocol.md's handshake both sides compute: the AuthMessage
 * every proof and signature covers, and the log's identity (the chain value of event 1) and
 * chain value at a cursor, which tie a branch to the one log it follows.
 *
 * Why the AuthMessage covers both nonces, the log id and the version: a proof recorded on one
 * connection is then worthless on any other (the head office's nonce is fresh), and a proof for
 * one network's head office is worthless at another's.
 */
#include "net/net_int.h"

#include <string.h>

static const char auth_label[16] = {'c', 'h', 'a', 'i', 'n', 's', 'y', 'n',
                                    'c', '-', 'a', 'u', 't', 'h', '-', '1'};

void cs__auth_message(uint8_t out[CS__AUTH_MESSAGE_BYTES], uint64_t shop,
                      const uint8_t cnonce[CS_NET_NONCE_BYTES],
                      const uint8_t snonce[CS_NET_NONCE_BYTES], uint64_t log_id, uint32_t proto)
{
    uint8_t *p = out;
    memcpy(p, auth_label, sizeof(auth_label));
    p += sizeof(auth_label);
    cs_be64_put(p, shop);
    p += 8;
    memcpy(p, cnonce, CS_NET_NONCE_BYTES);
    memcpy(p + CS_NET_NONCE_BYTES, snonce, CS_NET_NONCE_BYTES);
    p += 2 * CS_NET_NONCE_BYTES;
    cs_be64_put(p, log_id);
    p += 8;
    cs_be32_put(p, proto);
    p += 4;
    cs_assert(p == out + CS__AUTH_MESSAGE_BYTES);
}

cs_err cs__log_chain_at(cs_log_reader *r, uint64_t seq, uint64_t *chain_out)
{
    /* The log's own answer: after a cut, start - 1's chain is kept in `meta` (log/cut.c). */
    return cs_log_reader_chain_at(r, seq, chain_out);
}
