/* The slot-filling step of carom's weighted Maglev (src/carom/sched/maglev.py,
 * _fill_numpy), in C, so a 65537-slot table builds in a millisecond or two.
 *
 * It must give byte-identical tables to the numpy path: peers compare tables
 * by fingerprint. So it runs the same steps with the same windows and the same
 * float operations in the same order (build with -ffp-contract=off, never
 * -ffast-math: a fused multiply-add would round differently). What it saves is
 * work that cannot change the result: numpy materialises every window in full,
 * this scans a window only up to the last slot it proposes, settles collisions
 * with a per-slot best-so-far instead of a sort, and stops looking for a real's
 * next free slot once the real has its quota.
 *
 * The caller lends the scratch memory (carom_maglev_scratch_size bytes) and
 * reuses it: allocating ~1 MiB per call costs more in page faults than the fill.
 * Loaded by ctypes; carom_maglev_abi() lets the loader refuse a stale build.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifndef CAROM_MAGLEV_ABI /* overridden only by the test of a stale build */
#define CAROM_MAGLEV_ABI 2
#endif
#define STEP 0.125

int carom_maglev_abi(void) { return CAROM_MAGLEV_ABI; }

/* Per real: count, pos, due, width, scan_end, end_slot, cur, proposers
 * (int64 each) and found_all (a byte). Per slot: best_real, best_rank and
 * touched (int32 each) and one bit of taken. */
int64_t carom_maglev_scratch_size(int64_t n, int64_t size)
{
	return n * (8 * 8 + 1) + size * 3 * 4 + (size + 63) / 64 * 8 + 64;
}

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

static inline int is_taken(const uint64_t *taken, int64_t slot)
{
	return taken[slot >> 6] >> (slot & 63) & 1;
}

static inline int64_t next_slot(int64_t slot, int64_t skip, int64_t size)
{
	slot += skip;
	return slot >= size ? slot - size : slot;
}

/* The claim's due time, as numpy computes it: (count + rank) / quota. */
static inline double due_time(int64_t count, int64_t rank, int64_t quota)
{
	return (double)(count + rank) / (double)quota;
}

/* Fills out[0..size) with value[owner of the slot], owner being an index into
 * the per-real arrays. offset[i] < size, 1 <= skip[i] < size, quota[i] >= 1,
 * sum(quota) == size, size prime and < 2^31; scratch holds at least
 * carom_maglev_scratch_size(n, size) bytes, 8-byte aligned. Returns 0, or -2 if
 * the input breaks those rules (the caller checked them; this only refuses to
 * loop forever or write out of bounds). */
int carom_maglev_fill(int64_t n, const int64_t *offset, const int64_t *skip,
		      const int64_t *quota, const uint32_t *value, int64_t size,
		      uint32_t *out, void *scratch, int64_t scratch_len)
{
	int64_t total = 0;
	for (int64_t i = 0; i < n; i++) {
		if (quota[i] < 1 || skip[i] < 1 || skip[i] >= size || offset[i] < 0 ||
		    offset[i] >= size)
			return -2;
		total += quota[i];
	}
	if (n < 1 || size < 3 || size > INT32_MAX || total != size ||
	    scratch_len < carom_maglev_scratch_size(n, size) || (uintptr_t)scratch % 8)
		return -2;

	int64_t *count = scratch;
	int64_t *pos = count + n;
	int64_t *due = pos + n;
	int64_t *width = due + n;
	int64_t *scan_end = width + n;  /* where the real's scan stopped, in its window */
	int64_t *end_slot = scan_end + n; /* the slot there */
	int64_t *cur = end_slot + n;      /* slot at pos[i]: no division per step */
	int64_t *proposers = cur + n;
	uint64_t *taken = (uint64_t *)(proposers + n);
	int32_t *best_real = (int32_t *)(taken + (size + 63) / 64);
	int32_t *best_rank = best_real + size;
	int32_t *touched = best_rank + size;
	uint8_t *found_all = (uint8_t *)(touched + size); /* all it wanted, before scan_end */

	memset(count, 0, (size_t)n * sizeof(*count));
	memset(pos, 0, (size_t)n * sizeof(*pos));
	memcpy(cur, offset, (size_t)n * sizeof(*cur));
	memset(taken, 0, (size_t)(size + 63) / 64 * sizeof(*taken));
	memset(best_real, 0xff, (size_t)size * sizeof(*best_real)); /* -1: no proposal */

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

		int64_t n_prop = 0;
		for (int64_t i = 0; i < n; i++) {
			int64_t d = (int64_t)floor(horizon * (double)quota[i]);
			due[i] = (d < quota[i] ? d : quota[i]) - count[i];
			if (due[i] > 0)
				proposers[n_prop++] = i;
		}
		if (!n_prop)
			continue;

		/* Proposals in real order, so an equal due time keeps the earlier
		 * real: the numpy path's lexsort tie-break. Counts do not change
		 * until every proposal is in, so a rival's time can be recomputed. */
		int64_t n_touched = 0;
		for (int64_t k = 0; k < n_prop; k++) {
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
				if (!is_taken(taken, slot)) {
					rank++;
					int32_t b = best_real[slot];
					if (b < 0) {
						best_real[slot] = (int32_t)i;
						best_rank[slot] = (int32_t)rank;
						touched[n_touched++] = (int32_t)slot;
					} else if (due_time(count[i], rank, quota[i]) <
						   due_time(count[b], best_rank[slot], quota[b])) {
						best_real[slot] = (int32_t)i;
						best_rank[slot] = (int32_t)rank;
					}
				}
				slot = next_slot(slot, skip[i], size);
			}
			width[i] = w;
			scan_end[i] = j;
			end_slot[i] = slot;
			found_all[i] = rank == want;
		}

		for (int64_t t = 0; t < n_touched; t++) {
			int32_t s = touched[t];
			int32_t r = best_real[s];
			out[s] = value[r];
			taken[s >> 6] |= (uint64_t)1 << (s & 63);
			count[r]++;
			best_real[s] = -1;
		}
		unfilled -= n_touched;

		/* Every slot before the scan's end was taken at the step's start or
		 * has just been claimed (each proposed slot went to someone), so the
		 * first free slot of the window lies at or after it; a real that did
		 * not find all it wanted left no free slot in its window. A real with
		 * its quota never proposes again: where its next free slot lies
		 * cannot matter (numpy computes it; the search is longest at the end,
		 * when free slots are rare). */
		for (int64_t k = 0; k < n_prop; k++) {
			int64_t i = proposers[k];
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
					if (!is_taken(taken, slot)) {
						advance = j;
						break;
					}
					slot = next_slot(slot, skip[i], size);
				}
			}
			if (advance < w || j == w)
				cur[i] = slot; /* the slot at pos + advance */
			else /* the window ran past the permutation's end */
				cur[i] = (offset[i] + (pos[i] + w) % size * skip[i]) % size;
			pos[i] += advance;
		}
	}
	return 0;
}
