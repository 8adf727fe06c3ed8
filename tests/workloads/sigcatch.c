/* Writes "signal si_code si_value\n" to stdout for every SIGUSR1, SIGUSR2 and SIGRTMIN it
 * handles, so a test sees which signals reached it and with what siginfo. "ready" first. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void on_sig(int sig, siginfo_t *si, void *uc)
{
	char buf[96];
	int n = snprintf(buf, sizeof buf, "%d %d %d\n", sig, si->si_code, si->si_value.sival_int);
	(void)uc;
	write(1, buf, n);
}

int main(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_sig;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigaction(SIGUSR1, &sa, 0);
	sigaction(SIGUSR2, &sa, 0);
	sigaction(SIGRTMIN, &sa, 0);
	write(1, "ready\n", 6);
	for (;;)
		pause();
}
