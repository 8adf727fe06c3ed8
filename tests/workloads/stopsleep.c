/* A child in a 20 s nanosleep, with a SIGUSR1 handler installed without SA_RESTART, is stopped
 * (SIGSTOP), then sent SIGUSR1, which stays pending while it is stopped. At SIGCONT the kernel
 * delivers the handler and nanosleep returns -1 EINTR at once. Log (DIR/log), one line each:
 * "handler" and "nanosleep r=R errno=E took=S". DIR/ready once the child is stopped with the
 * signal pending; init (this process) then waits for ever. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int logfd;

static void on_usr1(int sig)
{
	(void)sig;
	write(logfd, "handler\n", 8);
}

static double mono(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	char path[4096];
	if (argc < 2)
		return 2;
	snprintf(path, sizeof path, "%s/log", argv[1]);
	logfd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	pid_t a = fork();
	if (a == 0) {
		struct sigaction sa;
		memset(&sa, 0, sizeof sa);
		sa.sa_handler = on_usr1;  /* no SA_RESTART */
		sigaction(SIGUSR1, &sa, 0);
		for (;;) {
			struct timespec ts = {20, 0};
			double t = mono();
			int r = nanosleep(&ts, 0);
			char buf[96];
			int n = snprintf(buf, sizeof buf, "nanosleep r=%d errno=%d took=%.1f\n", r, r ? errno : 0, mono() - t);
			write(logfd, buf, n);
		}
	}
	usleep(200000);
	kill(a, SIGSTOP);
	int st;
	waitpid(a, &st, WUNTRACED);
	kill(a, SIGUSR1);
	usleep(100000);
	snprintf(path, sizeof path, "%s/ready", argv[1]);
	close(open(path, O_WRONLY | O_CREAT, 0644));
	for (;;)
		pause();
}
