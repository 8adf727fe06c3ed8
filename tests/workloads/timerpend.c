/* Two periodic 10 ms CLOCK_MONOTONIC POSIX timers whose signals are blocked, so each has its
 * signal pending (one instance: the kernel does not re-arm a periodic timer whose signal is
 * pending, and counts what it missed as the overrun when it is delivered): SIGRTMIN+5 to the
 * process (SIGEV_SIGNAL, value 66) and SIGRTMIN+6 to the main thread (SIGEV_THREAD_ID, value
 * 77). DIR/ready once both are pending; once DIR/go exists, every pending instance is taken
 * (sigtimedwait, no wait) and logged to DIR/log as "SIG VALUE OVERRUN", then "drained", then
 * the next one of each (the timers still run) as "next SIG VALUE". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static timer_t make(int sig, int val, int notify)
{
	struct sigevent ev;
	memset(&ev, 0, sizeof ev);
	ev.sigev_notify = notify;
	ev.sigev_signo = sig;
	ev.sigev_value.sival_int = val;
	if (notify == SIGEV_THREAD_ID)
		ev._sigev_un._tid = syscall(SYS_gettid);
	timer_t t;
	timer_create(CLOCK_MONOTONIC, &ev, &t);
	struct itimerspec s = {{0, 10000000}, {0, 10000000}};
	timer_settime(t, 0, &s, 0);
	return t;
}

int main(int argc, char **argv)
{
	char path[4096], buf[128];
	struct stat st;
	if (argc < 2)
		return 2;
	sigset_t b;
	sigemptyset(&b);
	sigaddset(&b, SIGRTMIN + 5);
	sigaddset(&b, SIGRTMIN + 6);
	sigprocmask(SIG_BLOCK, &b, 0);
	make(SIGRTMIN + 5, 66, SIGEV_SIGNAL);
	make(SIGRTMIN + 6, 77, SIGEV_THREAD_ID);
	usleep(100000);
	snprintf(path, sizeof path, "%s/log", argv[1]);
	int log = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	snprintf(path, sizeof path, "%s/ready", argv[1]);
	close(open(path, O_WRONLY | O_CREAT, 0644));
	snprintf(path, sizeof path, "%s/go", argv[1]);
	while (stat(path, &st) != 0)
		usleep(20000);
	siginfo_t si;
	struct timespec zero = {0, 0};
	while (sigtimedwait(&b, &si, &zero) > 0)
		write(log, buf, snprintf(buf, sizeof buf, "%d %d %d\n", si.si_signo - SIGRTMIN, si.si_value.sival_int, si.si_overrun));
	write(log, "drained\n", 8);
	for (int i = 0; i < 2; i++) {
		struct timespec second = {1, 0};
		if (sigtimedwait(&b, &si, &second) > 0)
			write(log, buf, snprintf(buf, sizeof buf, "next %d %d\n", si.si_signo - SIGRTMIN, si.si_value.sival_int));
	}
	for (;;)
		pause();
}
