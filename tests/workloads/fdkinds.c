/* Workload holding the fd kinds beyond files and pipes, for dump/restore tests.
 *
 *   fdkinds DIR
 *
 * pid 1 only waits; pid 2 holds an eventfd (counter 5), a signalfd for SIGUSR2 (blocked), a
 * 100 ms interval timerfd, a FIFO DIR/fifo open at both ends with "hello" buffered, and an
 * epoll watching the timerfd and the signalfd. Its loop waits on the epoll and appends to
 * DIR/fd.log: "timer N" as expirations add up, and once DIR/go exists and a SIGUSR2 came
 * through the signalfd: "go ev=<eventfd counter> fifo=<bytes read from the FIFO> sig=<signo>".
 * DIR/ready appears when everything is set up.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
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
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 1};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    ev.data.u64 = 2;
    epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
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
            dprintf(log, "go ev=%llu fifo=%s sig=%d\n", (unsigned long long)count, buf, sig);
            sig = 0;
        }
    }
}
