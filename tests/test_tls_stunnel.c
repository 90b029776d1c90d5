/*
 * test_tls_stunnel.c: the encrypted deployment of docs/security.md ("Deploying over TLS"),
 * exactly as written there, on 127.0.0.1: a self-signed certificate made by openssl, one stunnel
 * (Debian's stunnel4) in front of `chainsync serve` (TLS in, plain to serve), one behind the
 * branch (plain in from the branch node, TLS out, checking the head office's certificate). The
 * branch joins and pulls through the tunnel and must end caught up and equal to the audit's
 * replay; a branch that skips the client tunnel and speaks plain TCP to the TLS port gets
 * nowhere (network, exit 4), and so does one whose stunnel expects another certificate name,
 * so the tunnel, and its check of the certificate, are really in the path.
 *
 * Needs /usr/bin/stunnel4 and /usr/bin/openssl (tools/setup.sh installs them); without them it
 * prints "skipped: ..." and passes nothing. stunnel listens on ports picked free just before it
 * starts (stunnel cannot report a port it chose); every child is stopped by pid and reaped.
 */
#include "tests/harness.h"
#include "tests/net_fixture.h"
#include "tests/run.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>

#define STUNNEL "/usr/bin/stunnel4"
#define OPENSSL "/usr/bin/openssl"
#define PASSWORD "tls-branch-password"
#define WAIT_MS 30000u
#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

static char *root;
static pid_t pids[4]; /* serve, head office's stunnel, branch's, one checking another name */

static pid_t spawn_prog(const char *const *argv, const char *log)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int in = open("/dev/null", O_RDONLY);
        int out = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(in, 0), dup2(out, 1), dup2(out, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    return pid;
}

static int run_quiet(const char *const *argv)
{
    char log[400];
    snprintf(log, sizeof(log), "%s/tools.log", root);
    pid_t pid = spawn_prog(argv, log);
    return pid < 0 ? -1 : cs_run_reap(pid, cs_run_now_ms() + WAIT_MS);
}

static int cs(const char *input, const char *const *args, char **out)
{
    return cs_run_code(input, args, out, NULL, WAIT_MS, !out);
}

static bool port_open(unsigned port)
{
    uint64_t deadline = cs_run_now_ms() + WAIT_MS;
    while (cs_run_now_ms() < deadline) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
        if (fd >= 0)
            close(fd);
        if (ok)
            return true;
        cs_run_sleep_ms(20);
    }
    return false;
}

static bool write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    bool ok = f && fputs(text, f) >= 0;
    if (f)
        ok = fclose(f) == 0 && ok;
    return ok;
}

static bool serve_start(const char *hq, char *addr, size_t len)
{
    char ready[400], log[400];
    snprintf(ready, sizeof(ready), "%s/ready", root);
    snprintf(log, sizeof(log), "%s/serve.log", root);
    return cs_fix_serve_start(&pids[0], hq, NULL, ready, log, addr, len, WAIT_MS);
}

/* One stunnel from the configuration `conf` (written to ROOT/name.conf). */
static bool stunnel_start(int slot, const char *name, const char *conf, unsigned port)
{
    char path[400], log[400];
    snprintf(path, sizeof(path), "%s/%s.conf", root, name);
    snprintf(log, sizeof(log), "%s/%s.log", root, name);
    if (!write_file(path, conf))
        return false;
    pids[slot] = spawn_prog(ARGS(STUNNEL, path), log);
    return pids[slot] > 0 && port_open(port);
}

/* docs/security.md, "Deploying over TLS": the recipe, tested. A branch behind its stunnel
 * joins a head office behind another, through TLS with the certificate checked, then catches
 * up with what was written after it joined and equals the audit's replay. */
static void test_tls_branch_through_stunnel_catches_up(void)
{
    char hq[300], br[300], br2[300], cert[300], key[300], addr[128] = "", conf[2048];
    snprintf(hq, sizeof(hq), "%s/hq", root);
    snprintf(br, sizeof(br), "%s/b1", root);
    snprintf(br2, sizeof(br2), "%s/b1-plain", root);
    snprintf(cert, sizeof(cert), "%s/head-office.crt", root);
    snprintf(key, sizeof(key), "%s/head-office.key", root);
    /* The certificate the head office's stunnel presents, made as docs/security.md says. */
    CHECK(run_quiet(ARGS(
              OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
              "-nodes", "-days", "2", "-subj", "/CN=head-office.example", "-addext",
              "subjectAltName=DNS:head-office.example", "-keyout", key, "-out", cert)) == 0);
    char *out = NULL;
    CHECK(cs(NULL, ARGS("init", "--data", hq, "--name", "HQ"), NULL) == 0);
    CHECK(cs(NULL, ARGS("network", "create", "--data", hq, "--name", "N"), NULL) == 0);
    CHECK(cs(PASSWORD "\n",
             ARGS("shop", "add", "--data", hq, "--name", "B1", "--password-stdin", "--json-out"),
             &out) == 0);
    unsigned long long id = 0;
    bool got = sscanf(out, "{\"id\":%llu", &id) == 1;
    free(out);
    CHECK(got);
    char shop[32];
    snprintf(shop, sizeof(shop), "%llu", id);
    CHECK(cs(NULL, ARGS("put", "service_category", "--data", hq, "--json", "{\"name\":\"Before\"}"),
             NULL) == 0);
    CHECK(serve_start(hq, addr, sizeof(addr)));
    unsigned tls_port = cs_fix_free_port(), local_port = cs_fix_free_port();
    CHECK(tls_port && local_port && tls_port != local_port);
    snprintf(conf, sizeof(conf),
             "foreground = yes\npid =\n\n[chainsync]\naccept = 127.0.0.1:%u\nconnect = %s\n"
             "cert = %s\nkey = %s\nsslVersionMin = TLSv1.2\n",
             tls_port, addr, cert, key);
    CHECK(stunnel_start(1, "head-office", conf, tls_port));
    snprintf(conf, sizeof(conf),
             "foreground = yes\npid =\n\n[chainsync]\nclient = yes\naccept = 127.0.0.1:%u\n"
             "connect = 127.0.0.1:%u\nverifyChain = yes\nCAfile = %s\n"
             "checkHost = head-office.example\nsslVersionMin = TLSv1.2\n",
             local_port, tls_port, cert);
    CHECK(stunnel_start(2, "branch", conf, local_port));
    char head[64];
    snprintf(head, sizeof(head), "127.0.0.1:%u", local_port);
    CHECK(
        cs(PASSWORD "\n",
           ARGS("branch", "join", "--data", br, "--head", head, "--shop", shop, "--password-stdin"),
           NULL) == 0);
    CHECK(cs(NULL, ARGS("put", "service_category", "--data", hq, "--json", "{\"name\":\"After\"}"),
             NULL) == 0);
    CHECK(cs(NULL, ARGS("sync", "--data", hq), NULL) == 0);
    CHECK(cs(NULL, ARGS("branch", "pull", "--data", br), NULL) == 0);
    CHECK(cs(NULL, ARGS("list", "service_category", "--data", br, "--json-out"), &out) == 0);
    bool both = strstr(out, "\"Before\"") && strstr(out, "\"After\"");
    free(out);
    CHECK(both);
    CHECK(cs(NULL, ARGS("audit", "verify", "--data", hq, "--branch", br), NULL) == 0);
    /* Plain TCP to the TLS port: stunnel waits for a TLS ClientHello and the node for a
     * CHALLENGE, so the join gives up with a network error. */
    char plain[64];
    snprintf(plain, sizeof(plain), "127.0.0.1:%u", tls_port);
    int rc = cs(
        PASSWORD "\n",
        ARGS("branch", "join", "--data", br2, "--head", plain, "--shop", shop, "--password-stdin"),
        &out);
    free(out);
    CHECK(rc == 4);
    /* A branch-side stunnel that expects another head office's name refuses this certificate:
     * the join cannot even start. */
    unsigned wrong_port = cs_fix_free_port();
    snprintf(conf, sizeof(conf),
             "foreground = yes\npid =\n\n[chainsync]\nclient = yes\naccept = 127.0.0.1:%u\n"
             "connect = 127.0.0.1:%u\nverifyChain = yes\nCAfile = %s\n"
             "checkHost = other-office.example\nsslVersionMin = TLSv1.2\n",
             wrong_port, tls_port, cert);
    CHECK(stunnel_start(3, "wrong-name", conf, wrong_port));
    snprintf(plain, sizeof(plain), "127.0.0.1:%u", wrong_port);
    rc = cs(
        PASSWORD "\n",
        ARGS("branch", "join", "--data", br2, "--head", plain, "--shop", shop, "--password-stdin"),
        &out);
    free(out);
    CHECK(rc == 4);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (access(STUNNEL, X_OK) != 0 || access(OPENSSL, X_OK) != 0) {
        printf("skipped: needs %s and %s (apt-get install stunnel4 openssl; tools/setup.sh)\n",
               STUNNEL, OPENSSL);
        return cs_test_finish();
    }
    root = cs_test_tmpdir("tls");
    if (!root)
        return 1;
    RUN(test_tls_branch_through_stunnel_catches_up);
    for (int i = 3; i >= 0; i--)
        cs_run_stop(pids[i], SIGTERM, 10000);
    cs_test_rmtree(root);
    free(root);
    return cs_test_finish();
}
