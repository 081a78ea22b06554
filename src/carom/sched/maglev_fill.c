/* The slot-filling step of carom's weighted Maglev (src/carom/sched/maglev.py,
 * _fill_numpy), in C, so a 65537-slot table builds in about a millisecond.
 *
 * It must give byte-identical tables to the numpy path: peers compare tables
 * by fingerprint. So it runs the same steps with the same windows and the same
 * float operations in the same order (build with -ffp-contract=off, never
 * -ffast-math: a fused multiply-add would round differently). What it saves is
 * work that cannot change the result: numpy materialises every window in full,
 * this scans a window only up to the last slot it proposes, and resolves
 * collisions with a per-slot best-so-far instead of a sort.
 *
 * Loaded by ctypes; carom_maglev_abi() lets the loader refuse a stale build.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#ifndef CAROM_MAGLEV_ABI /* overridden only by the test of a stale build */
#define CAROM_MAGLEV_ABI 1
#endif
#define STEP 0.125

int carom_maglev_abi(void) { return CAROM_MAGLEV_ABI; }

/* Smallest e in [0, 31] with 2^e >= need, or 31: numpy's
 * min(searchsorted(2 ** arange(32), need), 31). */
static int64_t window_width(int64_t need, int64_t size)
{
	int e = 0;
	while (e < 31 && ((int64_t)1 << e) < need)
		e++;
	int64_t w = (int64_t)1 << e;
	return w < size ? w : size;
}

/* Owner (index into the arrays) of every slot, written to owner[0..size).
 * offset[i] < size, 1 <= skip[i] < size, quota[i] >= 1, sum(quota) == size,
 * size prime and < 2^31. Returns 0; -1 if memory ran out; -2 if the input
 * breaks those rules (the caller checked them; this only refuses to loop). */
int carom_maglev_fill(int64_t n, const int64_t *offset, const int64_t *skip,
		      const int64_t *quota, int64_t size, int32_t *owner)
{
	int64_t total = 0;
	for (int64_t i = 0; i < n; i++) {
		if (quota[i] < 1 || skip[i] < 1 || skip[i] >= size || offset[i] < 0 ||
		    offset[i] >= size)
			return -2;
		total += quota[i];
	}
	if (n < 1 || size < 3 || size > INT32_MAX || total != size)
		return -2;

	int64_t *count = calloc((size_t)n, sizeof(*count));
	int64_t *pos = calloc((size_t)n, sizeof(*pos));
	int64_t *due = calloc((size_t)n, sizeof(*due));
	int64_t *width = calloc((size_t)n, sizeof(*width));
	/* where each real's scan stopped (window index), and the slot there */
	int64_t *scan_end = calloc((size_t)n, sizeof(*scan_end));
	int64_t *end_slot = calloc((size_t)n, sizeof(*end_slot));
	/* whether it found all the free slots it wanted before that */
	uint8_t *found_all = calloc((size_t)n, sizeof(*found_all));
	/* slot at pos[i], kept up to date so steps need no division */
	int64_t *cur = malloc((size_t)n * sizeof(*cur));
	/* taken slots as bits: 8 KiB for 65537 slots, so the scans, which test
	 * slots in random order, hit the L1 cache instead of owner[] */
	uint64_t *taken = calloc((size_t)(size + 63) / 64, sizeof(*taken));
	int32_t *best_real = malloc((size_t)size * sizeof(*best_real));
	double *best_time = malloc((size_t)size * sizeof(*best_time));
	int32_t *touched = malloc((size_t)size * sizeof(*touched));
	int64_t *proposers = malloc((size_t)n * sizeof(*proposers));
	int rc = -1;
	if (!count || !pos || !due || !width || !scan_end || !end_slot || !found_all || !cur ||
	    !taken || !best_real || !best_time || !touched || !proposers)
		goto out;

	for (int64_t i = 0; i < n; i++)
		cur[i] = offset[i];

	for (int64_t s = 0; s < size; s++) {
		owner[s] = -1;
		best_real[s] = -1;
	}

	double horizon = 0.0;
	int64_t unfilled = size;
	while (unfilled) {
		int64_t q_max = 0;
		for (int64_t i = 0; i < n; i++)
			if (count[i] < quota[i] && quota[i] > q_max)
				q_max = quota[i];
		double by_free = STEP * (double)unfilled / (double)size;
		double by_claim = 1.0 / (double)q_max;
		double next = horizon + (by_free >= by_claim ? by_free : by_claim);
		horizon = next < 1.0 ? next : 1.0;

		int64_t np_ = 0;
		for (int64_t i = 0; i < n; i++) {
			int64_t d = (int64_t)floor(horizon * (double)quota[i]);
			due[i] = (d < quota[i] ? d : quota[i]) - count[i];
			if (due[i] > 0)
				proposers[np_++] = i;
		}
		if (!np_)
			continue;

		/* Proposals, in real order, so an equal due time keeps the
		 * earlier real: the numpy path's lexsort tie-break. */
		int64_t n_touched = 0;
		for (int64_t k = 0; k < np_; k++) {
			int64_t i = proposers[k];
			int64_t want = due[i];
			int64_t need = (want + want / 4 + 2) * size / unfilled + 1;
			int64_t w = window_width(need, size);
			int64_t limit = size - pos[i]; /* positions >= size are not valid */
			if (limit > w)
				limit = w;
			int64_t slot = cur[i];
			int64_t rank = 0, j = 0;
			for (; j < limit && rank < want; j++) {
				if (!(taken[slot >> 6] >> (slot & 63) & 1)) {
					rank++;
					double t = (double)(count[i] + rank) / (double)quota[i];
					int32_t b = best_real[slot];
					if (b < 0) {
						best_real[slot] = (int32_t)i;
						best_time[slot] = t;
						touched[n_touched++] = (int32_t)slot;
					} else if (t < best_time[slot]) {
						best_real[slot] = (int32_t)i;
						best_time[slot] = t;
					}
				}
				slot += skip[i];
				if (slot >= size)
					slot -= size;
			}
			width[i] = w;
			scan_end[i] = j;
			end_slot[i] = slot;
			found_all[i] = rank == want;
		}

		for (int64_t t = 0; t < n_touched; t++) {
			int32_t s = touched[t];
			int32_t r = best_real[s];
			owner[s] = r;
			taken[s >> 6] |= (uint64_t)1 << (s & 63);
			count[r]++;
			best_real[s] = -1;
		}
		unfilled -= n_touched;

		/* Every slot before the scan's end was filled at the step's start
		 * or has just been claimed (each proposed slot went to someone), so
		 * the first free slot of the window lies at or after it; and if the
		 * real did not find all it wanted, the window has none left. */
		for (int64_t k = 0; k < np_; k++) {
			int64_t i = proposers[k];
			/* A real with its quota never proposes again, so where its
			 * next free slot lies cannot matter (numpy computes it; the
			 * search is longest at the end, when free slots are rare). */
			if (count[i] == quota[i])
				continue;
			int64_t w = width[i];
			int64_t j = scan_end[i];
			int64_t slot = end_slot[i]; /* slot at pos + j */
			int64_t limit = size - pos[i];
			if (limit > w)
				limit = w;
			int64_t advance = w;
			if (found_all[i]) {
				for (; j < limit; j++) {
					if (!(taken[slot >> 6] >> (slot & 63) & 1)) {
						advance = j;
						break;
					}
					slot += skip[i];
					if (slot >= size)
						slot -= size;
				}
			}
			if (advance < w || j == w)
				cur[i] = slot; /* slot is at pos + advance */
			else /* the window ran past the permutation's end */
				cur[i] = (offset[i] + (pos[i] + w) % size * skip[i]) % size;
			pos[i] += advance;
		}
	}
	rc = 0;
out:
	free(count);
	free(pos);
	free(due);
	free(width);
	free(scan_end);
	free(end_slot);
	free(found_all);
	free(cur);
	free(taken);
	free(best_real);
	free(best_time);
	free(touched);
	free(proposers);
	return rc;
}
