/*
 * gai_async.c — glibc's asynchronous lookups (getaddrinfo_a and friends,
 * in libc since 2.34, in libanl before) answered from the funnel. glibc's
 * own implementation runs each request on a helper thread that calls its
 * internal getaddrinfo, which no preload can reach: the name would go to
 * the system resolver.
 *
 * The funnel answers a name at once (it hands out a synthetic address and
 * resolves later, at connect), so each request is completed while
 * getaddrinfo_a runs, with exactly what the hooked getaddrinfo gives. A
 * request is therefore never in progress once submitted: gai_error gives
 * its result, gai_suspend returns at once and gai_cancel answers
 * EAI_ALLDONE. GAI_NOWAIT still notifies as asked (a signal queued to the
 * process, or a new thread), after every request is complete, as glibc
 * does for the list.
 *
 * A program the funnel leaves alone (ft_hooked says no) gets glibc's own
 * functions, for its requests and their gai_error/suspend/cancel alike.
 */
#include "ft_internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static struct {
	int (*getaddrinfo_a)(int, struct gaicb **, int, struct sigevent *);
	int (*gai_suspend)(const struct gaicb *const *, int, const struct timespec *);
	int (*gai_error)(struct gaicb *);
	int (*gai_cancel)(struct gaicb *);
} real_gai;

static pthread_once_t real_gai_once = PTHREAD_ONCE_INIT;

/* String literals, not the functions' names: in the link-in build those
 * names are macros for the __wrap_ hooks. */
static void real_gai_init(void)
{
	real_gai.getaddrinfo_a = (__typeof__(real_gai.getaddrinfo_a))dlsym(RTLD_NEXT, "getaddrinfo_a");
	real_gai.gai_suspend = (__typeof__(real_gai.gai_suspend))dlsym(RTLD_NEXT, "gai_suspend");
	real_gai.gai_error = (__typeof__(real_gai.gai_error))dlsym(RTLD_NEXT, "gai_error");
	real_gai.gai_cancel = (__typeof__(real_gai.gai_cancel))dlsym(RTLD_NEXT, "gai_cancel");
}

/* passthrough: glibc's own asynchronous lookups are wanted, and found
 * (a program that calls them is linked with them). */
static int passthrough(void)
{
	ft_init();
	if (ft_hooked())
		return 0;
	pthread_once(&real_gai_once, real_gai_init);
	return 1;
}

struct notify_thread {
	void (*fn)(union sigval);
	union sigval value;
};

static void *notify_thread_main(void *arg)
{
	struct notify_thread n = *(struct notify_thread *)arg;
	free(arg);
	n.fn(n.value);
	return NULL;
}

/* notify tells the program its list is done, as the sigevent asks. */
static int notify(const struct sigevent *sev)
{
	if (!sev)
		return 0;
	switch (sev->sigev_notify) {
	case SIGEV_NONE:
		return 0;
	case SIGEV_SIGNAL:
		/* glibc queues the signal with the value, to the process. */
		return sigqueue(getpid(), sev->sigev_signo, sev->sigev_value) == 0 ? 0 : EAI_SYSTEM;
	case SIGEV_THREAD: {
		struct notify_thread *n = malloc(sizeof *n);
		if (!n)
			return EAI_MEMORY;
		n->fn = sev->sigev_notify_function;
		n->value = sev->sigev_value;
		/* As glibc: the program's attributes as given (they are its
		 * own to keep), else a detached thread, since nobody joins it. */
		pthread_attr_t attr;
		pthread_attr_t *attrp = sev->sigev_notify_attributes;
		if (!attrp) {
			pthread_attr_init(&attr);
			pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
			attrp = &attr;
		}
		pthread_t tid;
		int r = pthread_create(&tid, attrp, notify_thread_main, n);
		if (attrp == &attr)
			pthread_attr_destroy(&attr);
		if (r != 0) {
			free(n);
			errno = r;
			return EAI_AGAIN;
		}
		return 0;
	}
	default:
		errno = EINVAL;
		return EAI_SYSTEM;
	}
}

int getaddrinfo_a(int mode, struct gaicb *list[], int nitems, struct sigevent *sevp)
{
	if (passthrough()) {
		if (!real_gai.getaddrinfo_a) {
			errno = ENOSYS;
			return EAI_SYSTEM;
		}
		return real_gai.getaddrinfo_a(mode, list, nitems, sevp);
	}
	if ((mode != GAI_WAIT && mode != GAI_NOWAIT) || nitems < 0) {
		errno = EINVAL;
		return EAI_SYSTEM;
	}
	for (int i = 0; i < nitems; i++) {
		struct gaicb *req = list[i];
		if (!req)
			continue;
		req->ar_result = NULL;
		/* getaddrinfo is the hook (its __wrap_ name in the link-in build). */
		req->__return = getaddrinfo(req->ar_name, req->ar_service, req->ar_request, &req->ar_result);
	}
	/* glibc ignores the sigevent in GAI_WAIT mode. */
	if (mode == GAI_NOWAIT)
		return notify(sevp);
	return 0;
}

int gai_error(struct gaicb *req)
{
	if (passthrough())
		return real_gai.gai_error ? real_gai.gai_error(req) : EAI_SYSTEM;
	return req->__return;
}

int gai_suspend(const struct gaicb *const list[], int nitems, const struct timespec *timeout)
{
	if (passthrough())
		return real_gai.gai_suspend ? real_gai.gai_suspend(list, nitems, timeout) : EAI_SYSTEM;
	/* Every submitted request is already complete. */
	for (int i = 0; i < nitems; i++)
		if (list[i])
			return 0;
	return EAI_ALLDONE;
}

int gai_cancel(struct gaicb *req)
{
	if (passthrough())
		return real_gai.gai_cancel ? real_gai.gai_cancel(req) : EAI_SYSTEM;
	/* Completed at submission: nothing left to cancel. */
	return EAI_ALLDONE;
}
