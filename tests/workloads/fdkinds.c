/* Workload holding the fd kinds beyond files and pipes, for dump/restore tests.
 *
 *   fdkinds DIR
 *
 * pid 1 only waits; pid 2 holds an eventfd (counter 5), a signalfd for SIGUSR2 (blocked), a
 * 100 ms interval timerfd, a FIFO DIR/fifo open at both ends with "hello" buffered, and an
 * unix socketpair, a unix stream listener at DIR/sock, and an epoll watching the timerfd, the
 * signalfd and the listener. Its loop waits on the epoll and appends to DIR/fd.log: "timer N"
 * as expirations add up; for each connection to DIR/sock it writes "hi" to it and closes it;
 * once DIR/go exists and a SIGUSR2 came through the signalfd: "go ev=<eventfd counter>
 * fifo=<bytes read from the FIFO> sig=<signo> pair=<what went through the socketpair>". An
 * inotify (in the epoll) watches DIR for IN_CREATE as wd 3 (wd 2 was used and removed): each
 * file DIR/probe* created logs "created <name> wd=<wd>".
 * DIR/ready appears when everything is set up.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char path[4096], fifo[4096];
    if (argc < 2)
        return 2;
    if (fork() != 0) {
        for (;;)
            wait(NULL), pause();
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sfd = signalfd(-1, &set, 0);
    int efd = eventfd(5, 0);
    int tfd = timerfd_create(CLOCK_MONOTONIC, 0);
    struct itimerspec its = {{0, 100 * 1000 * 1000}, {0, 100 * 1000 * 1000}};
    timerfd_settime(tfd, 0, &its, NULL);
    snprintf(fifo, sizeof fifo, "%s/fifo", argv[1]);
    mkfifo(fifo, 0600);
    int fr = open(fifo, O_RDONLY | O_NONBLOCK);
    int fw = open(fifo, O_WRONLY);
    if (write(fw, "hello", 5) != 5)
        return 1;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
        return 1;
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s/sock", argv[1]);
    int lsn = socket(AF_UNIX, SOCK_STREAM, 0);
    if (bind(lsn, (struct sockaddr *)&sun, sizeof sun) < 0 || listen(lsn, 8) < 0)
        return 1;
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 1};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    ev.data.u64 = 2;
    epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
    ev.data.u64 = 3;
    epoll_ctl(ep, EPOLL_CTL_ADD, lsn, &ev);
    int ino = inotify_init1(IN_NONBLOCK);
    inotify_add_watch(ino, "/", IN_ATTRIB); /* wd 1, then 2 removed: the restore must keep wd 3 */
    inotify_rm_watch(ino, inotify_add_watch(ino, "/tmp", IN_ATTRIB));
    inotify_add_watch(ino, argv[1], IN_CREATE);
    char evbuf[4096];
    while (read(ino, evbuf, sizeof evbuf) > 0)
        ;
    ev.data.u64 = 4;
    epoll_ctl(ep, EPOLL_CTL_ADD, ino, &ev);
    snprintf(path, sizeof path, "%s/fd.log", argv[1]);
    int log = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    snprintf(path, sizeof path, "%s/ready", argv[1]);
    close(open(path, O_WRONLY | O_CREAT, 0644));
    snprintf(path, sizeof path, "%s/go", argv[1]);
    long timer = 0;
    int sig = 0;
    for (;;) {
        struct epoll_event out[4];
        int n = epoll_wait(ep, out, 4, 1000);
        for (int i = 0; i < n; i++) {
            if (out[i].data.u64 == 1) {
                uint64_t ticks;
                if (read(tfd, &ticks, 8) == 8) {
                    timer += ticks;
                    dprintf(log, "timer %ld\n", timer);
                }
            } else if (out[i].data.u64 == 3) {
                int c = accept(lsn, NULL, NULL);
                if (c >= 0) {
                    if (write(c, "hi", 2) != 2)
                        dprintf(log, "accept write failed\n");
                    close(c);
                }
            } else if (out[i].data.u64 == 4) {
                ssize_t len = read(ino, evbuf, sizeof evbuf);
                for (char *p = evbuf; len > 0 && p < evbuf + len;) {
                    struct inotify_event *ie = (struct inotify_event *)p;
                    if (ie->len && strncmp(ie->name, "probe", 5) == 0)
                        dprintf(log, "created %s wd=%d\n", ie->name, ie->wd);
                    p += sizeof *ie + ie->len;
                }
            } else if (out[i].data.u64 == 2) {
                struct signalfd_siginfo si;
                if (read(sfd, &si, sizeof si) == sizeof si)
                    sig = si.ssi_signo;
            }
        }
        if (sig && access(path, F_OK) == 0) {
            uint64_t count = 0;
            char buf[16] = "";
            if (read(efd, &count, 8) != 8)
                count = 0;
            ssize_t got = read(fr, buf, sizeof buf - 1);
            buf[got > 0 ? got : 0] = 0;
            char pair[8] = "";
            if (write(sv[0], "ping", 4) == 4 && read(sv[1], pair, 4) == 4)
                pair[4] = 0;
            dprintf(log, "go ev=%llu fifo=%s sig=%d pair=%s\n", (unsigned long long)count, buf, sig, pair);
            sig = 0;
        }
    }
}
