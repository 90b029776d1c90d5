#include "log/log.h"
#include "tests/harness.h"

static void test_log_append_and_read_back(void)
{
    char *dir = cs_test_tmpdir("log");
    CHECK(dir);
    cs_log *log;
    CHECK_OK(cs_log_open(dir, NULL, &log));
    cs_event ev = {.shop = 1,
                   .id = 7,
                   .version = 1,
                   .actor = CS_STR("ana"),
                   .kind = CS_STR("put"),
                   .type = CS_STR("service")};
    uint64_t first;
    CHECK_OK(cs_log_append(log, &ev, 1, &first));
    CHECK(first == 1);
    cs_log_reader *r;
    CHECK_OK(cs_log_reader_open(log, &r));
    cs_log_record rec;
    CHECK_OK(cs_log_reader_get(r, 1, &rec));
    cs_event_decoder *d;
    CHECK_OK(cs_event_decoder_new(&d));
    cs_event_view v;
    CHECK_OK(cs_event_decode(d, rec.event, rec.event_len, &v));
    CHECK(v.seq == 1 && v.id == 7);
    uint64_t bad = 0;
    CHECK_OK(cs_log_reader_verify(r, &bad));
    cs_event_decoder_free(d);
    cs_log_reader_close(r);
    cs_log_close(log);
    cs_test_rmtree(dir);
    free(dir);
}

int main(void)
{
    RUN(test_log_append_and_read_back);
    return cs_test_finish();
}
