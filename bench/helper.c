/* bench/helper.c: the managed child of the espm benchmarks, compiled at run time by bench/run.py.
 *
 * Every timestamp is CLOCK_MONOTONIC in nanoseconds, the clock of Python's time.monotonic_ns(),
 * so the benchmark compares it with its own. Modes:
 *
 *   helper sig       handles SIGTERM without exiting: the handler writes "T <ns>\n" to stdout,
 *                    taken first thing in the handler. Prints "ready\n" once the handler is set.
 *                    Any other signal has its default action (SIGINT ends it).
 *   helper stamp     writes "T <ns>\n" first thing in main, then waits in pause().
 *   helper orphans N forks N grandchildren whose parents exit at once (so they are re-parented
 *                    to PID 1), each blocked on a pipe; prints "ready\n"; on a line from stdin,
 *                    takes "T <ns>", closes the pipe (they all exit together) and prints it;
 *                    then waits for EOF on stdin and exits 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Async-signal-safe: formats by hand and writes once. */
static void write_stamp(long long ns) {
    char buf[32];
    char digits[24];
    int n = 0, len = 0;
    if (ns == 0) digits[n++] = '0';
    while (ns > 0) { digits[n++] = (char)('0' + ns % 10); ns /= 10; }
    buf[len++] = 'T';
    buf[len++] = ' ';
    while (n > 0) buf[len++] = digits[--n];
    buf[len++] = '\n';
    ssize_t w;
    do { w = write(1, buf, (size_t)len); } while (w < 0 && errno == EINTR);
}

static void on_term(int sig) {
    long long t = now_ns();
    int saved = errno;
    (void)sig;
    write_stamp(t);
    errno = saved;
}

static int mode_sig(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) != 0) { perror("sigaction"); return 1; }
    sigset_t unblock;
    sigemptyset(&unblock);
    sigaddset(&unblock, SIGTERM);
    sigaddset(&unblock, SIGINT);
    sigprocmask(SIG_UNBLOCK, &unblock, NULL);
    if (write(1, "ready\n", 6) != 6) return 1;
    for (;;) pause();
    return 0;
}

static int mode_stamp(void) {
    write_stamp(now_ns());
    for (;;) pause();
    return 0;
}

static int mode_orphans(int count) {
    int fds[2];
    if (pipe(fds) != 0) { perror("pipe"); return 1; }
    for (int i = 0; i < count; i++) {
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return 1; }
        if (pid == 0) {
            pid_t grand = fork();
            if (grand == 0) {
                char c;
                close(fds[1]);
                close(0); close(1); close(2);
                while (read(fds[0], &c, 1) < 0 && errno == EINTR) {}
                _exit(0);
            }
            _exit(grand < 0 ? 1 : 0);
        }
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    }
    close(fds[0]);
    if (write(1, "ready\n", 6) != 6) return 1;
    char line[64];
    ssize_t r;
    do { r = read(0, line, sizeof line); } while (r < 0 && errno == EINTR);
    long long t = now_ns();
    close(fds[1]);  /* the release: every orphan's read returns EOF now */
    write_stamp(t);
    while ((r = read(0, line, sizeof line)) != 0) {
        if (r < 0 && errno != EINTR) break;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "sig") == 0) return mode_sig();
    if (argc >= 2 && strcmp(argv[1], "stamp") == 0) return mode_stamp();
    if (argc >= 3 && strcmp(argv[1], "orphans") == 0) return mode_orphans(atoi(argv[2]));
    fprintf(stderr, "usage: helper sig | stamp | orphans N\n");
    return 2;
}
