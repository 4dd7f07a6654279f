/*
 * The ingest benchmark's generator (scripts/bench_ingest.ts builds it with clang): makes
 * getppid() system calls, each of which ingest.bpf.c turns into one ring-buffer record while
 * this process is instrumented.
 *
 * Reads commands on stdin, one a line: "<count> <rate>" makes <count> calls at <rate> calls/s
 * (0: as fast as it can), pacing in batches of 64 against CLOCK_MONOTONIC by spinning, then
 * prints "done <count> <elapsed_ns>". It exits at the end of its input.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int main(void)
{
	unsigned long long count;
	double rate;
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	while (scanf("%llu %lf", &count, &rate) == 2) {
		uint64_t start = now_ns();
		for (unsigned long long i = 0; i < count;) {
			unsigned long long batch = count - i < 64 ? count - i : 64;
			for (unsigned long long j = 0; j < batch; j++)
				syscall(SYS_getppid);
			i += batch;
			if (rate > 0) {
				uint64_t due = start + (uint64_t)((double)i * 1e9 / rate);
				while (now_ns() < due)
					;
			}
		}
		uint64_t elapsed = now_ns() - start;
		printf("done %llu %llu\n", count, (unsigned long long)elapsed);
	}
	return 0;
}
