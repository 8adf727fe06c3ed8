#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* a pipe read end at fd 20 with O_ASYNC, owner us, signal SIGRTMIN+5: each SIGUSR1 writes a byte
 * into the pipe, and the I/O signal that follows is logged with its si_fd */
int main(int argc, char **argv) {
    char path[4096];
    int p[2];
    sigset_t set;
    snprintf(path, sizeof path, "%s/log", argv[1]);
    FILE *log = fopen(path, "a");
    setvbuf(log, NULL, _IOLBF, 0);
    if (pipe(p) || dup2(p[0], 20) != 20) return 1;
    close(p[0]);
    sigemptyset(&set);
    sigaddset(&set, SIGRTMIN + 5);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    fcntl(20, F_SETOWN, getpid());
    fcntl(20, F_SETSIG, SIGRTMIN + 5);
    fcntl(20, F_SETFL, fcntl(20, F_GETFL) | O_ASYNC | O_NONBLOCK);
    kill(getpid(), SIGUSR1);
    snprintf(path, sizeof path, "%s/ready", argv[1]);
    for (int n = 0;; n++) {
        siginfo_t si;
        int sig = sigwaitinfo(&set, &si);
        if (sig == SIGUSR1) {
            if (write(p[1], "x", 1) != 1) return 2;
        } else if (sig == SIGRTMIN + 5) {
            char c;
            if (read(20, &c, 1) != 1) return 3;
            fprintf(log, "io fd=%d\n", si.si_fd);
            if (n < 3) close(open(path, O_CREAT | O_WRONLY, 0644));
        }
    }
}
